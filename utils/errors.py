"""Errors that reach the user: each names the input and what is allowed."""


class InputError(ValueError):
    """A node input (or engine argument) the pack cannot use.

    The message starts with the input's name so ComfyUI's error panel points at it.
    """

    def __init__(self, input_name: str, problem: str, allowed: str = ""):
        self.input_name = input_name
        text = f"{input_name}: {problem}"
        if allowed:
            text += f" (allowed: {allowed})"
        super().__init__(text)


class WorkerError(RuntimeError):
    """A worker process failed; carries its rank and traceback text."""

    def __init__(self, rank: int, message: str, traceback_text: str = ""):
        self.rank = rank
        self.traceback_text = traceback_text
        detail = f"\n--- worker {rank} traceback ---\n{traceback_text}" if traceback_text else ""
        super().__init__(f"worker {rank}: {message}{detail}")


class Cancelled(RuntimeError):
    """Work stopped because the user cancelled (ComfyUI interrupt)."""
