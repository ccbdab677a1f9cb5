"""The errors koschei reports to users, each with the exit code the command line uses.

Exit codes everywhere: 0 success, 1 a check failed (tests, drift, regression), 2 usage or spec error.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


class KoscheiError(Exception):
    """An error with a message meant for the user and the exit code that goes with it."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(KoscheiError):
    """Bad arguments, a missing workspace, a repository in a state we cannot work in."""

    exit_code = EXIT_USAGE


class CheckFailed(KoscheiError):
    """A check did not hold: tests failed, generated files drifted, a real regression."""

    exit_code = EXIT_CHECK_FAILED


@dataclass(frozen=True)
class SpecIssue:
    """One problem in one spec file, located as precisely as the YAML allows."""

    path: str  # workspace-relative where possible
    line: int | None
    field: str  # dotted field path, e.g. "tunables.parallel"; "" for the whole document
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class SpecError(KoscheiError):
    """One or more specs are malformed. Nothing is rendered or written when this is raised."""

    exit_code = EXIT_USAGE

    def __init__(self, issues: list[SpecIssue]):
        self.issues = list(issues)
        noun = "problem" if len(self.issues) == 1 else "problems"
        message = f"{len(self.issues)} spec {noun}:\n" + "\n".join(f"  {i}" for i in self.issues)
        super().__init__(message, hint="fix the spec files above; nothing was written")
