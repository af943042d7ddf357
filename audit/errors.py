"""Exit codes and the exception hierarchy shared by every command.

Every error a user can cause is an :class:`UsageError` (exit code 4) whose message
says what was expected, what was found and where. Library code raises these; only
the CLI turns them into exit codes.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of ``prune-audit`` (pytest-style, public)."""

    OK = 0
    """Every rule passed (warnings allowed)."""
    FAILED = 1
    """At least one rule failed, or errored, under the policy."""
    INTERRUPTED = 2
    """The run was interrupted (Ctrl-C / SIGTERM); finished work is kept."""
    INTERNAL_ERROR = 3
    """A bug in prune-audit or a plugin outside any suite."""
    USAGE_ERROR = 4
    """Bad command line, config, policy, model or data."""
    NO_RESULTS = 5
    """Nothing was evaluated (no rules applied, or no variant produced a measurement)."""


class AuditError(Exception):
    """Base class of every error prune-audit raises on purpose."""

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR


class UsageError(AuditError):
    """The user asked for something that cannot be done as asked (exit code 4)."""

    exit_code = ExitCode.USAGE_ERROR

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        """One line: ``where: message (hint: ...)``."""
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class ConfigError(UsageError):
    """An invalid config or policy file; ``where`` is ``file:line:column``."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.column = column
        where = None
        if file is not None:
            where = str(file)
            if line is not None:
                where += f":{line}"
                if column is not None:
                    where += f":{column}"
        super().__init__(message, where=where, hint=hint)


class ModelError(UsageError):
    """The configured model cannot be loaded or does not fit the data."""


class DataError(UsageError):
    """The configured data cannot be loaded or lacks what the audit needs."""


class PluginError(UsageError):
    """An unknown or broken plugin (pruner, suite, reporter)."""


class Interrupted(KeyboardInterrupt):
    """Raised on SIGTERM and SIGINT (see :mod:`audit.interrupt`); exit code 2, finished work kept.

    A ``KeyboardInterrupt`` rather than an :class:`AuditError`, so that no ``except Exception``
    (a suite's, a library's, the runner's "one broken point must not lose the others") takes
    it for a crash and carries on.
    """

    exit_code = ExitCode.INTERRUPTED
