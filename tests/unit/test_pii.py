"""The scanner finds planted personal and secret data and leaves financial figures alone."""

from pathlib import Path

import pytest

from lancy_trl.privacy.pii import KINDS, redact, scan

CORPORA = Path(__file__).parent.parent / "data"

PLANTED = [  # (text, kind, the value)
    ("Contact jane.doe@examplebank.com for the wire.", "email", "jane.doe@examplebank.com"),
    ("Call the client on +44 20 7946 0958 after the close.", "phone", "+44 20 7946 0958"),
    ("Her desk line is (415) 555-2671.", "phone", "(415) 555-2671"),
    ("Pay into DE89 3704 0044 0532 0130 00 by Friday.", "iban", "DE89 3704 0044 0532 0130 00"),
    ("IBAN GB82WEST12345698765432 was debited.", "iban", "GB82WEST12345698765432"),
    ("Card 4111 1111 1111 1111 was declined.", "card", "4111 1111 1111 1111"),
    ("The SSN on file is 123-45-6789.", "ssn", "123-45-6789"),
    ("Login came from 203.0.113.42 at 9pm.", "ip", "203.0.113.42"),
    ("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "api_key", "AKIAIOSFODNN7EXAMPLE"),
    ("token ghp_1234567890abcdefghijklmnopqrstuvwxyzAB leaked", "api_key", "ghp_1234567890abcdefghijklmnopqrstuvwxyzAB"),
    ("Send 0.5 ETH to 0x52908400098527886E0F7030069857D2E4169EE7 now.", "crypto",
     "0x52908400098527886E0F7030069857D2E4169EE7"),
    ("BTC to 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2 please.", "crypto", "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"),
]

FINANCE = [  # nothing personal or secret in these
    "Revenue rose 12.5% to EUR 4,512,300 in Q3 2024, ahead of guidance.",
    "Net profit was $1,234,567.89 for the year ended 31 December 2023.",
    "AAPL closed at 189.84, up 2.31 points on volume of 58,414,460 shares.",
    "The bond CUSIP 037833100 and ISIN US0378331005 matured on 2025-06-30.",
    "Trade id 20240315-000123 settled T+2 at 101.25 per 100 nominal.",
    "EBITDA margin improved by 340 basis points year on year.",
    "The board proposed a dividend of 0.85 per share, payable 14.05.2024.",
    "Order 4532015112830366-X was an internal reference, not a card.",
    "Version 2.4.1.7 of the risk model went live on 2024.03.01.",
    "Loan book grew 7 percent to 12.3 billion, with NPLs at 1.9%.",
    "The fund returned 8.2% net of fees versus 7.6% for the benchmark.",
    "Operating cash flow reached 2,145 million in fiscal 2023.",
]


@pytest.mark.parametrize("text, kind, value", PLANTED)
def test_planted_values_are_found_with_their_kind(text, kind, value):
    assert [(f.kind, f.text) for f in scan(text)] == [(kind, value)]


def test_financial_figures_are_not_findings():
    assert {text: scan(text) for text in FINANCE} == {text: [] for text in FINANCE}


def test_the_finance_identifier_corpus_flags_nothing():
    """Trade, order and invoice ids (phone-shaped ones too), ISINs, CUSIPs, SEDOLs, LEIs, amounts with separators,
    dates, basis points and option strikes: no finding in any row."""
    rows = (CORPORA / "finance_identifiers.txt").read_text().splitlines()
    flagged = {row: [(f.kind, f.text) for f in scan(row)] for row in rows if scan(row)}
    assert len(rows) >= 50 and flagged == {}


def test_the_pii_corpus_finds_each_kind_in_each_row():
    rows = [line.split("\t") for line in (CORPORA / "pii_corpus.tsv").read_text().splitlines()]
    missed = {text: [f.kind for f in scan(text)] for kind, text in rows if [f.kind for f in scan(text)] != [kind]}
    assert len(rows) >= 50 and {kind for kind, _ in rows} == set(KINDS) and missed == {}


def test_phone_shaped_ids_are_kept_out_by_context_not_by_dropping_phones():
    assert [f.kind for f in scan("Trade TR-2025-118342 for 1,250,000.00 USD settled T+2 on 2025-11-14.")] == []
    assert [f.kind for f in scan("Trade id 2125550123 amended.")] == []
    assert [f.text for f in scan("Her number is 212-555-0123, trade 4471 booked.")] == ["212-555-0123"]
    assert [f.text for f in scan("Tel:2125550123")] == ["2125550123"]


def test_checksums_and_validators_reject_look_alikes():
    assert scan("DE89 3704 0044 0532 0130 01") == []  # IBAN checksum off by one
    assert scan("4111 1111 1111 1112") == []  # Luhn fails
    assert scan("SSN 000-12-3456") == []  # no SSN starts with 000
    assert scan("999.1.1.1 is not an address") == []


def test_redaction_replaces_each_value_with_its_kind_and_masks_reports():
    text = "Mail jane@bank.com or call +44 20 7946 0958."
    findings = scan(text)
    assert redact(text, findings) == "Mail <EMAIL> or call <PHONE>."
    assert findings[0].masked().endswith("om") and "jane" not in findings[0].masked()


def test_datasets_scan_reports_counts_and_lines_never_values(tmp_path):
    import json

    from typer.testing import CliRunner

    from lancy_trl.cli import app

    path = tmp_path / "clients.jsonl"
    rows = [{"prompt": text, "completion": "noted"} for text, _, _ in PLANTED]
    rows += [{"prompt": t, "completion": "ok"} for t in FINANCE]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["datasets", "scan", "--data-files", str(path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["rows"] == 24 and sum(out["counts"].values()) == 12 and out["counts"]["phone"] == 2
    assert out["findings"]["iban"] == [f"{path} line 4", f"{path} line 5"]  # where, 1-based file lines
    table = CliRunner().invoke(app, ["datasets", "scan", str(path)])
    assert "12 finding(s)" in table.output and "person names" in table.output
    assert "jane.doe" not in table.output and "4111 1111 1111 1111" not in table.output  # masked, never the values


def test_redact_pii_keeps_every_value_out_of_the_run(tiny_model, tmp_path):
    import json

    from typer.testing import CliRunner

    from lancy_trl.cli import app

    path = tmp_path / "clients.jsonl"
    rows = [{"prompt": f"{text} profit rose", "completion": "positive"} for text, _, _ in PLANTED] * 3
    rows += [{"prompt": t, "completion": "negative"} for t in FINANCE]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["sft", "--model", str(tiny_model), "--dataset", str(path), "--redact-pii",
                                      "--max-steps", "1", "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["redacted"] == {"email": 3, "phone": 6, "iban": 6, "card": 3, "ssn": 3, "ip": 3,
                                        "api_key": 6, "crypto": 6}
    assert "--redact-pii: replaced" in " ".join(result.output.split())
    held = (run / "data" / "validation.jsonl").read_text()
    assert any(f"<{kind.upper()}>" in held for _, kind, _ in PLANTED)  # held-out rows were redacted as trained
    for file in (p for p in run.rglob("*") if p.is_file()):
        data = file.read_bytes()
        for _, _, value in PLANTED:
            assert value.encode() not in data, (file, value)  # no value anywhere in the run directory


def test_datasets_scan_reads_inside_chat_messages(tmp_path):
    import json

    from typer.testing import CliRunner

    from lancy_trl.cli import app

    path = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "noted"}]}
            for text, _, _ in PLANTED[:4]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["datasets", "scan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"] == {"email": 1, "phone": 2, "iban": 1}
