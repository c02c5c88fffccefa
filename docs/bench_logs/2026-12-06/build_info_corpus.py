"""1,500 paragraph documents from this machine's GNU info manuals (not in the repository, not Python docs)."""
import gzip, json, random, re, glob, os
docs = []
for f in sorted(glob.glob("/usr/share/info/*.info*.gz")):
    manual = os.path.basename(f).split(".info")[0]
    raw = gzip.open(f, "rt", errors="replace").read()
    for node in raw.split("\x1f"):
        lines = node.strip("\n").split("\n")
        if not lines or not lines[0].startswith("File:"):
            continue
        m = re.search(r"Node: ([^,]+)", lines[0]); name = m.group(1).strip() if m else ""
        body = "\n".join(lines[1:])
        paras = [p.strip() for p in re.split(r"\n\s*\n", body)]
        buf = ""
        for p in paras:
            if not p or p.startswith("* Menu:") or set(p) <= set("=*-. \n"):
                continue
            buf = (buf + "\n\n" + p).strip()
            if len(buf) >= 300:
                if len(buf) <= 1500:
                    docs.append({"text": buf, "manual": manual, "node": name})
                buf = ""
random.Random(7).shuffle(docs)
docs = docs[:1500]
with open("/work/exp/info/info.jsonl", "w") as fh:
    for d in docs: fh.write(json.dumps(d) + "\n")
from collections import Counter
print(len(docs), Counter(d["manual"] for d in docs).most_common(20), sum(len(d["text"]) for d in docs))
