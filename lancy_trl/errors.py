"""The one exception type the CLI turns into a short message instead of a traceback."""


class LancyError(Exception):
    """A problem with the user's input or environment: says what is wrong and how to fix it."""


class SaveFailed(LancyError):
    """A checkpoint or the final model the disk would not take (full, read-only): the run stops resumable."""


def closest(word: str, choices, n: int = 3) -> list[str]:
    """The registered names nearest to a misspelt one, for 'did you mean' hints."""
    import difflib

    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)


def did_you_mean(word: str, choices) -> str:
    matches = closest(word, choices)
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""
