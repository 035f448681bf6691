"""What code a sweep ran: the git commit, TRL's automatic W&B tags, and the git refs of `--ref`.

TRL's benchmark asked GitHub's API for the pull request of the commit, unauthenticated: rate limits
and firewalls made that hang or fail. Here the PR number comes only from what is known locally.
"""

from __future__ import annotations

import os
import re
import subprocess

_GIT_TIMEOUT_S = 10


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


def git_commit() -> str | None:
    return _git("rev-parse", "--verify", "HEAD")


def git_tag(ref: str = "HEAD") -> str | None:
    """`git describe --tags REF`, else TRL's `no-tag-<commit count>-g<short hash>`."""
    described = _git("describe", "--tags", ref)
    if described:
        return described
    count, short = _git("rev-list", "--count", ref), _git("rev-parse", "--short", ref)
    return f"no-tag-{count}-g{short}" if count and short else None


def resolve_ref(ref: str) -> str | None:
    """The commit a git ref (branch, tag, sha, HEAD~2) names, settled now; None if there is none."""
    return _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")


def add_worktree(repo: str, path: str, commit: str) -> str | None:
    """Check `commit` out at `path` (`git worktree add --detach`); git's complaint, or None when done."""
    try:
        subprocess.run(["git", "worktree", "add", "--detach", path, commit], capture_output=True, text=True,
                       timeout=_GIT_TIMEOUT_S * 6, check=True, cwd=repo)
    except subprocess.CalledProcessError as error:
        return error.stderr.strip() or f"git worktree add exited {error.returncode}"
    except (OSError, subprocess.SubprocessError) as error:
        return str(error)
    return None


def pr_number(explicit: int | None, environ: dict[str, str] | os._Environ[str] = os.environ) -> int | None:
    """`--pr N`, else the pull request CI says it is building (GitHub Actions, GitLab)."""
    if explicit is not None:
        return explicit
    match = re.fullmatch(r"refs/pull/(\d+)/(merge|head)", environ.get("GITHUB_REF", ""))
    if match:
        return int(match[1])
    iid = environ.get("CI_MERGE_REQUEST_IID", "")
    return int(iid) if iid.isdigit() else None


def auto_tags(pr: int | None) -> list[str]:
    tags = [t for t in [git_tag()] if t]
    if pr is not None:
        tags.append(f"pr-{pr}")
    return tags


def merge_wandb_tags(existing: str, extra: list[str]) -> str:
    """WANDB_TAGS is comma separated; keep the user's tags first, drop repeats."""
    tags = [t for t in existing.split(",") if t]
    return ",".join(tags + [t for t in extra if t not in tags])
