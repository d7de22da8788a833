"""One error hierarchy for everything a user can get wrong.

Each error carries *what* went wrong and *how to fix it*; the CLI prints them
as one line, ``error: <what> — <how to fix>``, and exits non-zero.
"""
from __future__ import annotations


class AutotlError(Exception):
    """Base of every error autotl raises on purpose.

    Args:
        what: what is wrong, in the user's terms.
        fix: how to fix it; optional but strongly encouraged.
    """

    exit_code = 1

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = " ".join(str(what).split())  # always one line, even when wrapping another error
        self.fix = " ".join(str(fix).split())
        super().__init__(f"{self.what} — {self.fix}" if self.fix else self.what)


class UsageError(AutotlError):
    """A flag, argument or option is wrong."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration value (run config, search-space file) is wrong."""


class SpaceError(ConfigError):
    """A search-space file has an unknown key, a bad range or an unknown name."""


class DataError(AutotlError):
    """The dataset cannot be used as given."""


class PluginError(AutotlError):
    """A plugin failed to load or broke the plugin contract."""


class RegistryError(PluginError):
    """A name is unknown, registered twice, or registered with a wrong type."""


class TrialError(AutotlError):
    """One trial failed (NaN loss, out of memory, a plugin's build raised); the search goes on."""


class BuildError(TrialError):
    """A source model's ``build()`` failed (missing weights, no network, a bad checkpoint)."""


class ModelError(AutotlError):
    """A saved model cannot be loaded or used."""


class AutotlWarning(UserWarning):
    """Something the user should know that does not stop the run; shown as one line,
    ``warning: <what> — <what to do>``, never with autotl's file and source line."""

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = " ".join(str(what).split())
        self.fix = " ".join(str(fix).split())
        super().__init__(f"{self.what} — {self.fix}" if self.fix else self.what)


def warn(what: str, fix: str = "") -> None:
    """Warn the user in one line (Python's warning filters still apply, so tests and users can
    silence or raise them)."""
    import warnings

    warnings.warn(AutotlWarning(what, fix), stacklevel=2)


def _install_warning_format() -> None:
    """Show :class:`AutotlWarning` as ``warning: <what> — <what to do>``; every other warning keeps
    Python's own format."""
    import sys
    import warnings

    previous = warnings.showwarning
    if getattr(previous, "_autotl", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if isinstance(message, AutotlWarning) or (isinstance(category, type) and issubclass(category, AutotlWarning)):
            stream = file if file is not None else sys.stderr
            try:
                stream.write(f"warning: {message}\n")
            except (OSError, AttributeError):
                pass
            return
        previous(message, category, filename, lineno, file, line)

    show._autotl = True  # type: ignore[attr-defined]
    warnings.showwarning = show


_install_warning_format()
