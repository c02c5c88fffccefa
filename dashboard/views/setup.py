"""Setup: choose a model, a corpus (and shards) and prompts, then start a STRIDE run as a background job."""

from __future__ import annotations

import html
import shlex

import streamlit as st

from dashboard import common, figures, queries
from stride_core.runs import jobs
from stride_core.method.arguments import METHODS, AttributeArgs
from stride_core.runs.demo import default_model_dir
from stride_core.errors import StrideError
from stride_core.store.models import check_model_dir, pairing_warnings, training_record
from stride_core.store.workspace import validate_name

PAGE_SIZE = 20
PRESET_HELP = {
    "ci": "Seconds to a few minutes on a CPU: K=64 subsets, rank-8 operators, 40 training steps. For a quick look "
          "and for tests; rankings are noisy.",
    "default": "The full recipe: K=1000 subsets, 5 per document, rank-64 operators, 400 steps. Minutes on a GPU, "
               "much longer on a CPU for large corpora.",
    "custom": "Start from ci or default and change the main settings (subsets, rank, steps, documents kept) or pass "
              "any further `stride run` option.",
}

METHOD_HELP = ("**stride**: documents ranked by STRIDE's recovered influence (Δ loss). **stride+lexical**: a hybrid, "
               "labelled as such: helpful documents ranked by z(STRIDE) + z(TF-IDF cosine with the prompt and continuation); "
               "STRIDE's own score is shown beside it, and harmful documents stay STRIDE's. Measured in BENCHMARKS.md.")
# `stride run` options offered as number inputs for the custom preset: flag -> (label, fallback, help).
CUSTOM_FIELDS = {
    "--K": ("Subsets K", 64, "Number of random corpus subsets (one steering operator each). More subsets: "
                             "better recovery, more time. Must not exceed the number of documents."),
    "--S": ("Subsets per document S", 4, "How many subsets each document joins."),
    "--R": ("Basis rank R", 8, "Rank of the shared steering basis."),
    "--designs": ("Independent designs", 1, "Independent subset designs, each with its own operators; their scores "
                                            "are averaged. 3 is measurably more accurate, at 3x the operator cost."),
    "--steps": ("Operator training steps", 40, "Training steps of the steering operators."),
    "--top-k": ("Documents kept per direction", 50, "How many helpful and harmful documents to store per prompt."),
    "--max-new-tokens": ("Continuation tokens", 32, "Length of the model's greedy continuation that is attributed."),
}


def _preset_values(name: str) -> dict:
    """The preset's values for CUSTOM_FIELDS, from the engine's argument dataclasses (empty if unavailable)."""
    try:
        from stride_core.method.arguments import AttributeArgs, preset
    except ImportError:
        return {}
    p = preset(name)
    a = AttributeArgs()
    return {"--K": p["subsets"].K, "--S": p["subsets"].S, "--R": p["operators"].R, "--designs": p["subsets"].designs,
            "--steps": p["operators"].steps,
            "--top-k": a.top_k, "--max-new-tokens": a.max_new_tokens}


ws = common.workspace()
root = str(ws.root)
st.title("Set up a STRIDE run")
st.caption("STRIDE attributes each prompt and the model's continuation of it to the training documents that most "
           "changed its loss. Pick the model, the corpus it was trained on, and the prompts; the run starts as "
           "a background job and the Runs page shows its progress.")

problems: list[str] = []

# ------------------------------------------------------------------------------------------ model
with common.guard("the model section"):
    st.subheader("1 · Model")
    kind = st.radio("Model", ["builtin", "local"], horizontal=True, key="model_kind",
                    format_func=lambda k: {"builtin": "Built-in tiny model (trained on pydocs)",
                                           "local": "Local Hugging Face folder"}[k])
    model_path = None
    trained_on = "pydocs" if kind == "builtin" else None  # the corpus the chosen model was trained on, when known
    if kind == "local":
        raw = st.text_input("Model folder", key="model_path", placeholder="/path/to/hf-model",
                            help="A local folder with config.json, tokenizer files and *.safetensors weights. Nothing "
                                 "is downloaded; pickled weights and custom modelling code are refused.")
        if not raw.strip():
            st.info("Enter the path of a local Hugging Face causal-LM folder.")
            problems.append("no model folder given")
        else:
            try:
                cfg = check_model_dir(raw.strip())
                model_path = raw.strip()
                record = training_record(model_path)
                trained_on = record["corpus"] if record else None
                st.success(f"Model folder looks valid: `{cfg.get('model_type', '?')}`, "
                           f"{cfg.get('num_hidden_layers') or cfg.get('n_layer') or '?'} layers"
                           + (f", trained on corpus `{trained_on}` ({int(record.get('n_used_docs') or 0):,} documents)."
                              if record else "."))
            except StrideError as exc:
                st.error(f"Invalid model folder: {exc}")
                problems.append("the model folder is invalid")

# ----------------------------------------------------------------------------------------- corpus
shards_arg = None
corpus = None
builds_default = False
with common.guard("the corpus section"):
    st.subheader("2 · Corpus")
    cdf = queries.corpora(root, queries.db_version(root))
    names = list(cdf["name"])
    builds_default = "pydocs" not in names
    options = names + (["pydocs"] if builds_default else [])
    # The corpus follows the model: when the chosen model changes, pre-select the corpus it was trained on.
    model_key = f"{kind}:{model_path or ''}"
    if st.session_state.get("_corpus_follows") != model_key:
        st.session_state["_corpus_follows"] = model_key
        if trained_on in options:
            st.session_state["corpus"] = trained_on
    corpus = st.selectbox(
        "Corpus", options, key="corpus",
        format_func=lambda n: (f"{n} — built by the job (the default stdlib-docs corpus)" if n == "pydocs" and builds_default
                               else f"{n} — {int(cdf.set_index('name').loc[n, 'n_docs']):,} documents"))
    if not names:
        st.info("This workspace has no corpus yet. The default corpus **pydocs** (the Python standard-library docs "
                "of this Python installation, a few thousand documents; the exact count shows once it is built) is built by the job in a few seconds; to audit "
                "your own data, import it first with `stride corpus import FILE --name NAME` and train a model on it "
                "with `stride model train-tiny --corpus NAME --out MODEL_DIR`.")
    if corpus and corpus in names:
        row = cdf.set_index("name").loc[corpus]
        stats = queries.shard_stats(root, corpus, queries.db_version(root))
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Documents", f"{int(row['n_docs']):,}")
        c2.metric("Characters", f"{int(row['n_chars']):,}")
        c3.metric("Shards", int(row["n_shards"]))
        c4.metric("Exact duplicates", int(row["n_duplicates"]))
        by_shard = stats.set_index("shard")
        all_shards = [int(s) for s in stats["shard"]]
        chosen = st.multiselect(
            "Shards to index", all_shards, default=all_shards, key=f"shards_{corpus}",
            format_func=lambda s: f"shard {s} — {int(by_shard.loc[s, 'n_docs']):,} docs, {common.fmt_bytes(float(by_shard.loc[s, 'n_bytes']))}",
            help="STRIDE indexes the chosen shards only; rankings can only name documents from them.")
        if not chosen:
            st.warning("Pick at least one shard.")
            problems.append("no shard selected")
        elif len(chosen) < len(all_shards):
            shards_arg = sorted(chosen)
        if len(all_shards) > 1:
            st.plotly_chart(figures.shard_bars(stats), key="shard_chart")

        with st.expander("Browse documents", expanded=False):
            q = st.text_input("Search text (case-insensitive) or a doc_id", key="doc_search")
            scope = tuple(sorted(chosen)) if chosen else None
            total, _ = queries.search_documents(root, corpus, q, scope, 1, 0, queries.db_version(root))
            n_pages = max(1, -(-total // PAGE_SIZE))
            page = st.number_input(f"Page (of {n_pages})", min_value=1, max_value=n_pages, value=1, step=1, key="doc_page")
            _, docs = queries.search_documents(root, corpus, q, scope, PAGE_SIZE, (int(page) - 1) * PAGE_SIZE,
                                               queries.db_version(root))
            st.caption(f"{total:,} matching document(s) in the selected shards.")
            if total:
                st.dataframe(docs, hide_index=True, key="doc_table",
                             column_config={"text": st.column_config.TextColumn("text", width="large")})
                # The table's cell overlay runs off the page for long texts: the full text shows here, wrapped and
                # scrollable inside the page.
                by_id = {int(d): t for d, t in zip(docs["doc_id"], docs["text"])}
                shown_id = st.selectbox("Full text of document", list(by_id), key=f"doc_full_{corpus}",
                                        format_func=lambda d: f"doc {d} — {' '.join(str(by_id[d]).split())[:80]}")
                if shown_id is not None:
                    common.html_block(html.escape(str(by_id[shown_id])), max_height=360)
    elif corpus == "pydocs":
        st.caption("All shards of pydocs will be indexed.")

# ---------------------------------------------------------------------------------------- prompts
prompts: list = []
with common.guard("the prompts section"):
    st.subheader("3 · Prompts")
    src = st.radio("Prompts from", ["samples", "type", "given", "upload"], horizontal=True, key="prompt_source",
                   format_func=lambda s: {"samples": "Sample prompts", "type": "Type them",
                                          "given": "Prompt + completion", "upload": "Upload .txt / .jsonl"}[s])
    if src == "samples":
        prompts = jobs.load_prompt_file(jobs.sample_prompts_path("jsonl"))
        st.caption(f"{len(prompts)} sample prompts about the Python standard library (data/sample_prompts.jsonl).")
    elif src == "type":
        text = st.text_area("One prompt per line", key="prompt_text", height=150,
                            placeholder="To serialize a Python dictionary as a JSON string, you can call")
        prompts = jobs.parse_prompts_text(text)
    elif src == "given":
        # "Why did the model say X?": X is scored by teacher forcing instead of being generated
        g1, g2 = st.columns(2)
        given_prompt = g1.text_area("Prompt", key="given_prompt", height=120,
                                    placeholder="To serialize a Python dictionary as a JSON string, you can call")
        given_completion = g2.text_area("Completion to attribute", key="given_completion", height=120,
                                        placeholder=" json.dumps(obj), which returns a str.",
                                        help="The text whose loss STRIDE explains, scored after the prompt by teacher "
                                             "forcing. Leave it empty to attribute the model's own continuation. "
                                             "Start it with a space if it continues the prompt's last word.")
        if given_prompt.strip():
            prompts = [{"prompt": given_prompt.strip(), "prompt_id": "q00", "completion": given_completion}]
    else:
        up = st.file_uploader("Prompt file", type=["txt", "jsonl", "json"], key="prompt_file",
                              help=".txt: one prompt per line. .jsonl: one object per line with a `prompt` (or `text`) "
                                   "field and optionally `prompt_id`/`id` and `completion` (the text to attribute "
                                   "instead of the model's own continuation). .json: a list of such objects.")
        if up is not None:
            try:
                raw = up.getvalue().decode("utf-8-sig")
            except UnicodeDecodeError:
                st.error("The file is not UTF-8 text.")
                raw = ""
            try:
                prompts = jobs.parse_prompt_upload(raw, up.name)
            except StrideError as exc:
                st.error(f"Cannot read {up.name}: {exc}")
    if prompts:
        given = [isinstance(p, dict) and bool(str(p.get("completion") or "").strip()) for p in prompts]
        preview = [{"prompt": p["prompt"] if isinstance(p, dict) else p,
                    **({"completion": (p.get("completion") or "") if isinstance(p, dict) else ""} if any(given) else {})}
                   for p in prompts]
        st.dataframe(preview, hide_index=True, key="prompt_preview", height=min(300, 38 + 35 * len(preview)))
        n_given = sum(given)
        st.caption(f"{len(prompts)} prompt(s). " + (
            "For each, the model writes a continuation and STRIDE explains its loss on it." if not n_given else
            f"{n_given} with a given completion, which STRIDE explains as written (teacher forcing); "
            f"{len(prompts) - n_given} continued by the model."))
    else:
        st.warning("The prompt list is empty: type, upload or pick at least one prompt.")
        problems.append("no prompts")

# --------------------------------------------------------------------------------------- settings
extra_args: list[str] = []
with common.guard("the settings section"):
    st.subheader("4 · Settings")
    c1, c2 = st.columns(2)
    choice = c1.radio("Preset", ["ci", "default", "custom"], key="preset_choice", horizontal=True,
                      help="\n\n".join(f"**{k}**: {v}" for k, v in PRESET_HELP.items()))
    c1.caption(PRESET_HELP[choice])
    device = c2.selectbox("Device", ["auto", "cpu", "cuda"], key="device",
                          help="auto uses the GPU when there is one, the CPU otherwise.")
    method = c2.radio("Ranking method", list(METHODS), index=list(METHODS).index(AttributeArgs().method), key="method",
                      horizontal=True, help=METHOD_HELP)
    extra_args += ["--method", method]
    preset = choice
    if choice == "custom":
        preset = c1.selectbox("Base preset", ["ci", "default"], key="custom_base")
        base = _preset_values(preset)
        if base:
            k1, k2, k3 = st.columns(3)
            for i, (flag, (label, default, help_)) in enumerate(CUSTOM_FIELDS.items()):
                value = base.get(flag, default)
                v = (k1, k2, k3)[i % 3].number_input(label, min_value=1, value=int(value), step=1,
                                                      key=f"custom_{preset}_{flag}", help=help_)
                extra_args += [flag, str(int(v))]
        raw_extra = c1.text_input("Further `stride run` options", key="extra_args", placeholder="--lr 0.001 --positive")
        try:
            extra_args += shlex.split(raw_extra)
        except ValueError as exc:
            st.error(f"Cannot parse the extra options: {exc}")
            problems.append("unparsable extra options")
        with st.expander("`stride run` options"):
            st.code(jobs.engine_help(wait_s=10) or "(the engine's `stride run` command is not available here)", language="text")
    if "run_name" not in st.session_state:
        st.session_state["run_name"] = jobs.suggest_run_name(ws)
    run_name = c2.text_input("Run name", key="run_name", help="Letters, digits, '_' or '-'; becomes runs/<name>/.")
    try:
        validate_name(run_name, "run name")
        if ws.runs_dir.joinpath(run_name).exists():
            st.error(f"A run named {run_name!r} already exists: choose another name.")
            problems.append("the run name is taken")
    except StrideError as exc:
        st.error(str(exc))
        problems.append("invalid run name")

# ------------------------------------------------------------------------------------------ start
model_preset = preset
if kind == "builtin":
    model_path = str(default_model_dir(ws, model_preset))
    if jobs.builtin_model_ready(ws, model_preset):
        st.caption(f"Built-in model ({model_preset} preset): `{model_path}`.")
    elif (busy := jobs.preparing_job(ws, model_preset=model_preset)):
        st.warning(f"Run **{busy}** is training the built-in model ({model_preset} preset) right now: start this "
                   "run when it has finished (see the Runs page), or pick the other preset.")
        problems.append("the built-in model is being trained")
    else:
        st.info(f"The built-in model ({model_preset} preset) is not trained yet: the job trains it first "
                f"({'about a minute' if model_preset == 'ci' else 'several minutes'} on a CPU).")
with common.guard("the model/corpus pairing check"):
    if corpus:
        if kind == "builtin" and not jobs.builtin_model_ready(ws, model_preset):
            # not trained yet: what it will be trained on (the preset's document cap over pydocs)
            from stride_core.store.tiny_model import TinyModelArgs

            n_py = int(cdf.set_index("name").loc["pydocs", "n_docs"]) if "pydocs" in names else None
            cap = TinyModelArgs.preset(model_preset).max_docs
            record = {"corpus": "pydocs", "n_corpus_docs": n_py,
                      "n_used_docs": min(cap, n_py) if cap and n_py else n_py}
        else:
            record = training_record(model_path) if model_path else None
        n_target = int(cdf.set_index("name").loc[corpus, "n_docs"]) if corpus in names else None
        for w in pairing_warnings(record, corpus, n_target):
            st.warning(f"Model and corpus do not match: {w}.", icon=":material/link_off:")
if corpus == "pydocs" and builds_default and (busy := jobs.preparing_job(ws, corpus="pydocs")):
    st.warning(f"Run **{busy}** is building the default corpus right now: wait a few seconds and reload.")
    problems.append("the default corpus is being built")
if jobs.engine_available(wait_s=0.5) is False:
    st.warning("The STRIDE engine command `stride run` is not available in this installation yet: a job would fail.")

if not corpus:
    problems.append("no corpus selected")
if problems:
    st.caption("Cannot start yet: " + "; ".join(problems) + ".")
if st.button("Start run", type="primary", disabled=bool(problems), key="start"):
    with common.guard("starting the job"):
        jobs.start_job(ws, run_name, corpus, model_path, prompts, preset, device, shards_arg, extra_args=extra_args,
                       ensure_corpus="pydocs" if corpus == "pydocs" and builds_default else None,
                       ensure_model_preset=(model_preset if kind == "builtin" and not jobs.builtin_model_ready(ws, model_preset)
                                            else None))
        st.session_state["selected_run"] = run_name
        del st.session_state["run_name"]
        queries.corpora.clear()
        st.switch_page(common.PAGE_RUNS)
