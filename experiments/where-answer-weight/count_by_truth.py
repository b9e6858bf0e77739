"""`How many objects are there?` accuracy by the true count, and the commonest wrong answers, pooled over saved answers:

    python experiments/where-answer-weight/count_by_truth.py NAME A.json [B.json ...]
"""

import json
import sys
from collections import Counter, defaultdict

name, paths = sys.argv[1], sys.argv[2:]
right_by_truth, wrong = defaultdict(list), Counter()
for path in paths:
    for r in json.load(open(path))["records"]:
        if r["kind"] == "count":
            right_by_truth[r["expected"]].append(r["answer"] == r["expected"])
            if r["answer"] != r["expected"]:
                wrong[f"{r['expected']}->{r['answer']}"] += 1
print(name, " ".join(f"{k}: {sum(v) / len(v):.2f} of {len(v)}" for k, v in sorted(right_by_truth.items())))
print("  commonest wrong:", ", ".join(f"{k} x{n}" for k, n in wrong.most_common(6)))
