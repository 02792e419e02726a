"""Run inside the fresh venv: torch must be absent; the packaged pipeline must classify
one test review per language. Standard library + spaCy only (no project imports)."""

import importlib.util
import json
import os
import sys
from pathlib import Path


def main(package: str, test_path: str, output_path: str) -> int:
    """Check the installed pipeline and write a JSON report.

    package (str): Pipeline package name.
    test_path (str): Gold test DocBin.
    output_path (str): Report path.
    RETURNS (int): Exit code.
    """
    import spacy
    from spacy.tokens import DocBin

    problems = []
    for forbidden in ("torch", "spacy_transformers", "transformers"):
        if importlib.util.find_spec(forbidden) is not None:
            problems.append(f"{forbidden} is importable")
    nlp = spacy.load(package)
    docs = list(DocBin().from_disk(test_path).get_docs(nlp.vocab))
    checked = {}
    for doc in docs:
        lang = doc.user_data.get("lang")
        if lang in checked:
            continue
        cats = nlp(doc.text).cats
        gold = max(doc.cats, key=doc.cats.get)
        if set(cats) != {"NEGATIVE", "POSITIVE"} or abs(sum(cats.values()) - 1.0) > 1e-3:
            problems.append(f"{lang}: bad cats {cats}")
        checked[lang] = {"cats": cats, "gold": gold, "chars": len(doc.text)}
    report = {
        "ok": not problems,
        "python": sys.executable,
        "package": package,
        "pipeline": nlp.pipe_names,
        "spacy": spacy.__version__,
        "languages": checked,
        "problems": problems,
    }
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path + ".tmp"
    with open(tmp, "w", encoding="utf8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
    os.replace(tmp, output_path)
    for lang, r in checked.items():
        print(f"{lang}: {r['cats']} (gold {r['gold']})")
    for p in problems:
        print(f"problem: {p}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
