"""Recall and false reads of the FHIR mapping on the test records (tests/records.py), by kind
of fact. Run: .venv/bin/python -m bench.records_recall"""

from __future__ import annotations

from service import create_app
from tests.records import RECORDS, score


def main() -> None:
    k = create_app({"TESTING": True}).extensions["evaluator"].knowledge
    table = score(k)
    print(f"{len(RECORDS)} records")
    print(f"{'kind of fact':16} {'expected':>8} {'read':>5} {'recall':>7} {'must not':>8} {'false reads':>11}")
    total = {"expected": 0, "read": 0, "false": 0, "forbidden": 0}
    for kind, row in sorted(table.items()):
        for key in total:
            total[key] += row[key]
        recall = row["read"] / row["expected"] if row["expected"] else 1.0
        print(f"{kind:16} {row['expected']:8} {row['read']:5} {recall:7.0%} {row['forbidden']:8} {row['false']:11}")
    recall = total["read"] / total["expected"]
    print(f"{'all':16} {total['expected']:8} {total['read']:5} {recall:7.0%} {total['forbidden']:8} "
          f"{total['false']:11}")


if __name__ == "__main__":
    main()
