"""Errors a user can cause and fix: shown as one sentence, never as a bare traceback."""


class UserError(Exception):
    """A problem with the user's input (params, data, paths) described in one actionable sentence.

    The CLI prints it as `error: <message>` and exits 2; notebooks show the sentence as the cell
    error. Messages follow `<where>: <what is wrong> (<what to do>)`.
    """
