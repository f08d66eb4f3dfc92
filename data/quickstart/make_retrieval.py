"""Write data/quickstart/retrieval/: a small BEIR folder where a team's own jargon hides the answer.

An operations team writes its runbooks in plain terms ("Restart the message queue on staging") but asks for them
in its own slang ("bounce the mailbag on staging?"). A general-purpose encoder matches the shared words (the
environment) and misses the slang; fine-tuning on some of the team's (question, runbook) pairs teaches it, and
the held-out questions, which combine the same slang in new ways, show whether it generalised. Every text is
generated here from the word lists below, written for embedkit; rerun this script to rebuild the folder
byte for byte.

    python data/quickstart/make_retrieval.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20261201
DOCUMENTS = 420
SPLITS = {"train": 0.6, "dev": 0.15, "test": 0.25}

# (what the runbooks say, what the team says)
THINGS = [
    ("message queue", "mailbag"), ("load balancer", "traffic cop"), ("database replica", "shadow twin"),
    ("object storage bucket", "attic"), ("DNS record", "signpost"), ("TLS certificate", "badge"),
    ("build pipeline", "conveyor"), ("container registry", "warehouse"), ("cron job", "alarm clock"),
    ("firewall rule", "bouncer"), ("search index", "card catalogue"), ("cache cluster", "scratchpad"),
    ("log shipper", "paper boy"), ("metrics dashboard", "cockpit"), ("feature flag", "light switch"),
    ("VPN gateway", "tunnel"), ("backup vault", "bunker"), ("email relay", "pigeon"),
    ("payment service", "till"), ("identity provider", "gatekeeper"), ("Kubernetes node", "worker bee"),
    ("CDN edge cache", "corner shop"), ("secrets manager", "safe"), ("message broker topic", "chat room"),
    ("GPU training cluster", "furnace"), ("web frontend", "shop window"), ("data warehouse", "barn"),
    ("service mesh", "switchboard"), ("API rate limiter", "turnstile"), ("on-call rotation", "hot potato"),
]
ACTIONS = [
    ("restart", "bounce"), ("delete", "nuke"), ("create", "spin up"), ("scale out", "fatten"),
    ("roll back", "rewind"), ("rotate the credentials of", "reshuffle the keys of"), ("back up", "stash"),
    ("monitor", "babysit"), ("migrate", "move house with"), ("drain", "empty out"), ("patch", "darn"),
    ("audit", "frisk"),
]
PLACES = ["staging", "production", "the eu-west region", "the us-east region", "the test lab", "the disaster "
          "recovery site", "the customer sandbox", "the analytics account"]
DETAILS = [
    "Open a change ticket first and announce it in the operations channel.",
    "Check the health endpoint afterwards and keep the runbook log up to date.",
    "Expect a few minutes of degraded service while this runs.",
    "Only the platform team may do this outside business hours.",
    "Use the admin console; the command-line tool lacks this action.",
    "Wait for the green status light before you tell anyone it is done.",
]
QUESTIONS = ["how do I {act} the {thing} in {place}?", "{act} the {thing} on {place}", "need to {act} our {thing} "
             "in {place}, steps?", "what is the procedure to {act} the {thing} for {place}"]


def main() -> None:
    rng = random.Random(SEED)
    combos = [(a, t, p) for a in range(len(ACTIONS)) for t in range(len(THINGS)) for p in range(len(PLACES))]
    chosen = rng.sample(combos, DOCUMENTS)
    corpus, queries, judged = [], [], []
    for number, (a, t, p) in enumerate(chosen):
        (act, act_slang), (thing, thing_slang), place = ACTIONS[a], THINGS[t], PLACES[p]
        title = f"{act.capitalize()} the {thing} in {place}"
        text = f"This runbook explains how to {act} the {thing} in {place}. {rng.choice(DETAILS)}"
        corpus.append({"_id": f"doc{number}", "title": title, "text": text})
        question = rng.choice(QUESTIONS).format(act=act_slang, thing=thing_slang, place=place)
        queries.append({"_id": f"q{number}", "text": question})
        judged.append((f"q{number}", f"doc{number}"))
    rng.shuffle(judged)
    folder = Path(__file__).parent / "retrieval"
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    start = 0
    for split, share in SPLITS.items():
        count = round(share * len(judged))
        rows = judged[start : start + count]
        start += count
        (folder / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in rows))


if __name__ == "__main__":
    main()
