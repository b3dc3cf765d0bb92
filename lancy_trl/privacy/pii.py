"""Personal and secret data in training text, found with validators rather than patterns alone.

    findings = scan("Wire to DE89 3704 0044 0532 0130 00, call +44 20 7946 0958")   # [Finding("iban", ...), ...]

Each kind has a candidate pattern and, where one exists, a well-kept validator that must accept it: IBANs by their
checksum (python-stdnum), payment cards by Luhn and issuer prefix, US SSNs by stdnum's rules, phone numbers by
phonenumbers' matcher at STRICT_GROUPING leniency (valid, and grouped as the country writes its numbers), IP
addresses by the standard library. API keys and tokens are matched by the issuers' documented prefixes (AWS, GitHub,
Slack, OpenAI, Google, Stripe, private keys), not by entropy, which flags ordinary words. Financial figures are left
alone: amounts, dates, percentages, basis points, strikes, tickers, CUSIPs and ISINs pass no validator above, and a
phone-shaped trade or order id is kept out by context (digits inside a longer token such as "TR-2025-118342", or
just after an identifier's name: order, trade, ticket, invoice...). tests/data/ holds the finance-identifier corpus
(nothing flagged) and the PII corpus (each kind found) this is measured on. Person names need a language model: not
detected, and `lancy datasets scan` says so.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

KINDS = ("email", "phone", "iban", "card", "ssn", "ip", "api_key", "crypto")
NOT_DETECTED = "person names (they need a named-entity model; none is installed)"

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
IPV6 = re.compile(r"(?<![\w:])[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}(?![\w:])")  # "::" too; ipaddress decides
API_KEY = re.compile(
    r"\b(?:AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|sk-(?:proj-)?[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{35}|(?:sk|rk)_live_[0-9A-Za-z]{20,})\b"
    r"|-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"
)
VERSION = re.compile(r"\b(?:version|release|build|ver\.?|v)\s*$", re.IGNORECASE)
ID_BEFORE = re.compile(  # a phone-shaped number named as a finance identifier
    r"\b(?:order|trade|ticket|invoice|ref|reference|id|contract|deal|transaction|txn|batch|po|confirmation|cusip|"
    r"isin|sedol|figi|lei|portfolio|loan|swap|block|series|quote|position|clearing member)\s*(?:id|no\.?|#)?\s*[:#]?\s*$",
    re.IGNORECASE)
CRYPTO = re.compile(r"\b(?:0x[0-9a-fA-F]{40}|bc1[02-9ac-hj-np-z]{25,87}|[13][1-9A-HJ-NP-Za-km-z]{25,34})\b")


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    text: str

    def masked(self) -> str:
        """The value with all but its last 2 characters hidden, for reports (never the value itself)."""
        keep = self.text[-2:] if len(self.text) > 6 else ""
        return "*" * (len(self.text) - len(keep)) + keep


def _card(digits: str) -> bool:
    from stdnum import luhn

    issuer = digits[0] == "4" or 51 <= int(digits[:2]) <= 55 or 2221 <= int(digits[:4]) <= 2720 or digits[:2] in ("34", "37") \
        or digits[:4] == "6011" or digits[:2] == "65"
    return 13 <= len(digits) <= 19 and issuer and luhn.is_valid(digits)


def _base58check(address: str) -> bool:
    """A legacy bitcoin address's own checksum (double SHA-256 over base58)."""
    import hashlib

    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    n = 0
    for ch in address:
        n = n * 58 + alphabet.index(ch)
    raw = n.to_bytes(25, "big") if n.bit_length() <= 200 else b""
    return len(raw) == 25 and hashlib.sha256(hashlib.sha256(raw[:-4]).digest()).digest()[:4] == raw[-4:]


def _candidates(text: str, region: str) -> list[Finding]:
    import phonenumbers
    from stdnum import iban
    from stdnum.us import ssn

    found = [Finding("email", m.start(), m.end(), m.group()) for m in EMAIL.finditer(text)]
    found += [Finding("iban", m.start(), m.end(), m.group()) for m in IBAN.finditer(text) if iban.is_valid(m.group())]
    found += [Finding("ssn", m.start(), m.end(), m.group()) for m in SSN.finditer(text) if ssn.is_valid(m.group())]
    found += [Finding("card", m.start(), m.end(), m.group()) for m in CARD.finditer(text)
              if _card(re.sub(r"\D", "", m.group()))]
    for pattern in (IPV4, IPV6):
        for m in pattern.finditer(text):
            try:
                ipaddress.ip_address(m.group())
            except ValueError:
                continue
            if not VERSION.search(text[max(0, m.start() - 12): m.start()]):  # "version 2.4.1.7" is not an address
                found.append(Finding("ip", m.start(), m.end(), m.group()))
    found += [Finding("api_key", m.start(), m.end(), m.group()) for m in API_KEY.finditer(text)]
    found += [Finding("crypto", m.start(), m.end(), m.group()) for m in CRYPTO.finditer(text)
              if m.group()[0] not in "13" or _base58check(m.group())]
    for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.STRICT_GROUPING):
        if not _identifier(text, match.start, match.end):
            found.append(Finding("phone", match.start, match.end, match.raw_string))
    return found


def _identifier(text: str, start: int, end: int) -> bool:
    """Digits a phone matcher accepts that are part of a finance identifier: glued into a longer token
    ("TR-2025-118342", "2025-11-14-118342") or named as an order, trade, ticket... id just before."""
    glued = (start > 0 and (text[start - 1].isalnum() or text[start - 1] in "-/_")) or \
        (end < len(text) and (text[end].isalnum() or text[end] in "-/_"))
    return glued or bool(ID_BEFORE.search(text[max(0, start - 40): start]))


def scan(text: str, region: str = "US") -> list[Finding]:
    """Findings in reading order; where two overlap (a card number inside an IBAN), the longer one is kept."""
    kept: list[Finding] = []
    for f in sorted(_candidates(text, region), key=lambda f: (f.start, -(f.end - f.start))):
        if kept and f.start < kept[-1].end:
            continue
        kept.append(f)
    return kept


def redact(text: str, findings: list[Finding]) -> str:
    """The text with each finding replaced by its typed placeholder (`<EMAIL>`, `<IBAN>`, ...)."""
    out, at = [], 0
    for f in findings:
        out += [text[at:f.start], f"<{f.kind.upper()}>"]
        at = f.end
    return "".join(out) + text[at:]


def redact_rows(ds: Any, counts: Counter, region: str = "US") -> Any:
    """A chat or text dataset with every finding in its prompts, answers, targets and text replaced by its typed
    placeholder; `counts` gains the findings per kind (the values are never kept)."""
    from datasets import Dataset

    if ds is None:
        return None

    def clean(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        findings = scan(text, region)
        counts.update(f.kind for f in findings)
        return redact(text, findings) if findings else text

    def row(r: dict[str, Any]) -> dict[str, Any]:
        out = dict(r)
        for key in ("prompt", "completion"):
            if isinstance(r.get(key), list):
                out[key] = [{**m, "content": clean(m["content"])} for m in r[key]]
        for key in ("target", "text"):
            if key in r:
                out[key] = clean(r[key])
        return out

    return Dataset.from_list([row(r) for r in ds])
