"""Every title and message a customer can see on the connect pages, in one place.

Sentence case, and each message says what happened and what the customer can
do next. ``app`` is how the integrating application is named in a sentence
(:func:`app_label`: its configured name, else "the application"); it never
starts one. The pages escape all of it, company names from Invoiced included.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How a page names the integrating application when it has no configured name.
GENERIC_APP = "the application"
#: A company name from Invoiced is shortened to this many characters in a sentence.
MAX_NAME_IN_TEXT = 40


@dataclass(frozen=True)
class Message:
    """A page's heading (also its title) and the sentences under it."""

    title: str
    text: str


def app_label(app_name: str | None) -> str:
    return app_name or GENERIC_APP


def _name(company: str | None, fallback: str) -> str:
    if not company:
        return fallback
    return company if len(company) <= MAX_NAME_IN_TEXT else company[: MAX_NAME_IN_TEXT - 1] + "\u2026"


# ------------------------------------------------------------------ the page frame
def banner(app_name: str | None) -> str:
    """The line above every page's heading."""
    return f"Connect {app_name} to Invoiced" if app_name else "Connect to Invoiced"


def back_link(app_name: str | None) -> str:
    return f"Back to {app_label(app_name)}"


HELP_PREFIX = "Need help? Contact"
REFERENCE_LABEL = "Reference"


def support_link_text(app_name: str | None) -> str:
    """The text of a link to the support page (an e-mail link shows the address)."""
    return f"{app_name} support" if app_name else "support"


# ------------------------------------------------------------------ the connect link
def link_missing(app: str) -> Message:
    return Message("Connect link needed",
                   f"This page only works with a connect link. Start connecting from {app} again.")


def link_invalid(app: str) -> Message:
    """A malformed or tampered link, or one signed with a key this service does not have."""
    return Message("Invalid link",
                   "This connect link is incomplete or has been changed. Open the link again exactly as you "
                   f"received it, or ask {app} for a new one.")


def link_expired(app: str) -> Message:
    return Message("Link expired", f"This connect link has expired. Ask {app} for a new link, then open it.")


def link_used(app: str) -> Message:
    return Message("Link already used",
                   f"This connect link has already been used, and each link works once. Ask {app} for a new one.")


def return_address_refused(app: str) -> Message:
    return Message("Invalid link",
                   f"This connect link returns to an address that is no longer allowed. Ask {app} for a new link.")


# ------------------------------------------------------------------ the request and the sign-in
def parameter_repeated(name: str) -> Message:
    return Message("Invalid request",
                   f"The {name} parameter was given more than once. Start again from your connect link.")


def parameter_too_long(name: str) -> Message:
    return Message("Invalid request", f"The {name} parameter is too long. Start again from your connect link.")


def parameter_not_text(name: str) -> Message:
    return Message("Invalid request", f"The {name} parameter is not valid text. Start again from your connect link.")


def no_state() -> Message:
    return Message("Invalid request", "The sign-in response has no state. Start again from your connect link.")


def no_code() -> Message:
    return Message("Invalid request",
                   "The sign-in response has no authorization code. Start again from your connect link.")


def session_not_found() -> Message:
    return Message("Session not found",
                   "This browser did not start the connection, or its cookie expired. "
                   "Open the connect link again in this browser.")


def sign_in_expired() -> Message:
    """The flow state was refused: expired, already used, or another browser's."""
    return Message("Sign-in expired",
                   "This sign-in attempt has expired, was already used, or was started in another browser. "
                   "Start again from your connect link.")


def other_environment() -> Message:
    return Message("Invalid request",
                   "This sign-in was started against another Invoiced environment. "
                   "Start again from your connect link.")


def authorization_expired() -> Message:
    """Invoiced refused the code (expired or already used)."""
    return Message("Sign-in expired",
                   "Invoiced did not accept the sign-in, because it expired or was already used. "
                   "Start again from your connect link.")


# ------------------------------------------------------------------ how it ended
def connected(company: str | None) -> Message:
    return Message(f"Connected to {company or 'your Invoiced account'}",
                   "Your Invoiced account is now connected. You can close this window.")


def declined(app: str) -> Message:
    """The customer said no on Invoiced (Invoiced's own wording is not for people)."""
    return Message("Not connected",
                   "You declined access to your Invoiced account, so nothing was connected. "
                   f"To connect after all, open a new connect link from {app}.")


#: Invoiced's own error text is shortened to this many characters in a sentence, so the
#: next step after it always fits the outcome cookie (a character may escape to 12 bytes).
MAX_REPORTED_IN_TEXT = 100


def authorize_error(reported: str) -> Message:
    """Invoiced sent an error other than a refusal; ``reported`` is its own text."""
    if len(reported) > MAX_REPORTED_IN_TEXT:
        reported = reported[: MAX_REPORTED_IN_TEXT - 1] + "\u2026"
    return Message("Not connected",
                   f"Invoiced could not complete the sign-in and reported: {reported}. "
                   "Start again from your connect link.")


def invoiced_unavailable() -> Message:
    return Message("Invoiced is unavailable",
                   "Invoiced did not answer in time, so nothing was connected. "
                   "Wait a few minutes, then open your connect link again.")


def invoiced_answer_unusable() -> Message:
    return Message("Could not connect",
                   "Invoiced's answer could not be used, so nothing was connected. "
                   "Open your connect link again; if this keeps happening, contact support.")


def credentials_refused(app: str) -> Message:
    return Message("Could not connect",
                   f"Invoiced did not accept the credentials of {app}, so nothing was connected. "
                   f"Contact {app} support.")


def company_mismatch(expected: str | None, chosen: str | None, app: str) -> Message:
    """A reconnect link for one company, and another company chosen on Invoiced.

    For status 409: nothing was changed, and the connection keeps its company."""
    expected_name = _name(expected, "the company it connected before")
    chosen_name = _name(chosen, "another company")
    return Message("Different company chosen",
                   f"This link reconnects {expected_name}, but {chosen_name} was chosen on Invoiced, so nothing "
                   f"was changed. Start again from your connect link and choose {expected_name}, or ask {app} "
                   "for a link that may connect the other company.")


def nothing_to_show(app: str) -> Message:
    return Message("Nothing to show",
                   f"There is no connection result to show here. To connect, open the connect link from {app}.")


# ------------------------------------------------------------------ the service itself
def not_configured() -> Message:
    return Message("Not available",
                   "This connection service is not set up yet. Try again later, or contact support.")


def not_found() -> Message:
    return Message("Page not found", "There is nothing at this address. Open the connect link you were given.")


def unexpected() -> Message:
    return Message("Something went wrong",
                   "Nothing was connected. Wait a few minutes, then open your connect link again.")
