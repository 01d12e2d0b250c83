"""The CLI's init / generate / library / annotate / export path on the tiny model (what the README shows)."""
import json

from neat_studio.cli import main


def _run(capsys, ws, *argv):
    rc = main(["--workspace", str(ws), *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_generate_annotate_export(tmp_path, capsys):
    ws = tmp_path / "ws"
    rc, out, _ = _run(capsys, ws, "init")
    assert rc == 0 and json.loads(out)["prompts_added"] == 72
    rc, out, _ = _run(capsys, ws, "generate", "--model", "tiny", "--system", "toxic", "--tag", "harmful",
                      "--limit", "2", "--k", "2", "--max-new-tokens", "6", "--seed", "3")
    rep = json.loads(out)
    assert rc == 0 and rep["prompts"] == 2 and rep["responses"] >= 2 and rep["origin"] == "negative:toxic@1"
    from neat_studio.store import Store

    with Store(ws / "studio.duckdb") as s:
        pid = next(p["id"] for p in s.list_prompts(tag="harmful", limit=50) if len(s.list_responses(p["id"])) >= 2)
        rs = s.list_responses(pid)
        user_text = s.get_prompt(pid)["text"]
        negative_text = s.resolve_ref("toxic@1")["text"]
        assert all(r["seed"] is not None and r["params"]["max_new_tokens"] == 6 for r in rs)
    rc, out, _ = _run(capsys, ws, "annotate", pid, "--annotator", "ann",
                      "--ranking", f"{rs[0]['id']};{rs[1]['id']}")
    assert rc == 0 and json.loads(out)["annotation_id"]
    rc, out, _ = _run(capsys, ws, "export", "trl", str(tmp_path / "p.jsonl"), "--annotated-only")
    assert rc == 0 and json.loads(out)["written"] == 1
    pair = json.loads((tmp_path / "p.jsonl").read_text())
    assert pair["chosen"] == rs[0]["text"] and pair["rejected"] == rs[1]["text"]
    # export and backup share one rule: an existing file is never overwritten; new folders are made
    before = (tmp_path / "p.jsonl").read_bytes()
    rc, _, err = _run(capsys, ws, "export", "listwise", str(tmp_path / "p.jsonl"))
    assert rc == 2 and "already exists; choose a new file name" in err
    assert (tmp_path / "p.jsonl").read_bytes() == before
    rc, out, _ = _run(capsys, ws, "export", "listwise", str(tmp_path / "new" / "dir" / "l.jsonl"))
    assert rc == 0 and (tmp_path / "new" / "dir" / "l.jsonl").is_file()
    # the exported prompt is the plain user prompt: the negative system prompt is never part of it
    assert pair["prompt"] == user_text and negative_text not in pair["prompt"]


def test_cli_bad_input_is_one_clear_error(tmp_path, capsys):
    ws = tmp_path / "ws"
    _run(capsys, ws, "init")
    rc, _, err = _run(capsys, ws, "generate", "--model", "tiny", "--system", "no_such_prompt@3")
    assert rc == 2 and err.startswith("error:") and "no_such_prompt" in err
    rc, _, err = _run(capsys, ws, "generate", "--model", "tiny", "--prompt-id", "deadbeef")
    assert rc == 2 and "unknown prompt id(s): deadbeef" in err
    rc, _, err = _run(capsys, ws, "annotate", "deadbeef", "--ranking", "a;b")
    assert rc == 2 and err.startswith("error:")
    rc, _, err = _run(capsys, ws, "annotate", "deadbeef")  # show mode
    assert rc == 2 and err == "error: unknown prompt id 'deadbeef'\n"
    # paths that are folders or not databases: one line, rc 2, no traceback
    (tmp_path / "dir").mkdir()
    rc, _, err = _run(capsys, ws, "export", "trl", str(tmp_path / "dir"))
    assert rc == 2 and err == f"error: {tmp_path / 'dir'} is a directory: give the export a file name\n"
    (tmp_path / "fake.duckdb").write_text("not a database")
    rc, _, err = _run(capsys, ws, "restore", str(tmp_path / "fake.duckdb"))
    assert rc == 2 and err.startswith("error:") and "not a valid DuckDB database" in err and "Traceback" not in err
    (tmp_path / "r.jsonl").write_text('{"text": "x"}\n')
    rc, _, err = _run(capsys, ws, "refusal", "eval", "--data", str(tmp_path / "r.jsonl"))
    assert rc == 2 and "record 1" in err and "label" in err


def test_cli_mistyped_workspace_is_an_error_and_creates_nothing(tmp_path, capsys):
    ws = tmp_path / "ws"
    _run(capsys, ws, "init")
    typo = tmp_path / "sw"
    for argv in (["prompts", "list"], ["library", "list"], ["export", "trl", str(tmp_path / "o.jsonl")],
                 ["snapshot"], ["annotate", "deadbeef"], ["preview", "toxic", "--model", "tiny"]):
        rc, out, err = _run(capsys, typo, *argv)
        assert rc == 2 and out == "" and err.startswith(f"error: no studio store at {typo / 'studio.duckdb'}")
        assert "neat_studio init --workspace" in err
    rc = main(["--workspace", str(ws), "--db", str(tmp_path / "nope.duckdb"), "library", "list"])
    err = capsys.readouterr().err
    assert rc == 2 and "no studio store at" in err and "nope.duckdb" in err
    assert not typo.exists() and not (tmp_path / "nope.duckdb").exists() and not (tmp_path / "o.jsonl").exists()
    (tmp_path / "afile").write_text("x")
    for argv in (["init"], ["prompts", "list"]):
        rc, _, err = _run(capsys, tmp_path / "afile", *argv)
        assert rc == 2 and err == (f"error: the workspace {tmp_path / 'afile'} is a file, not a folder: pass a folder "
                                   f"to --workspace (or NEAT_STUDIO_HOME)\n")
    assert (tmp_path / "afile").read_text() == "x"
    rc, out, _ = _run(capsys, ws, "library", "list")  # the real one still works
    assert rc == 0 and "toxic" in out


def test_cli_runs_are_offered_as_models(tmp_path):
    """A run started from a shell (not through the app) is not in the store; its final model is still offered in
    the Compare / Train model lists, next to the store's runs."""
    from neat_studio.config import Workspace
    from neat_studio.studio import Studio

    ws = Workspace(tmp_path / "ws").ensure()
    for name, final in (("20261124-1200-neat", True), ("20261124-1300-sft", False)):
        d = ws.runs / name
        (d / "final" if final else d).mkdir(parents=True)
        if final:
            (d / "final" / "config.json").write_text("{}")
    with Studio(ws, model_spec="tiny") as st:
        choices = dict((spec, label) for label, spec in st.model_choices())
    assert choices[str(ws.runs / "20261124-1200-neat")] == "run dir 20261124-1200-neat (started from the CLI, final)"
    assert str(ws.runs / "20261124-1300-sft") not in choices  # no final model: nothing to load


def test_cli_generate_system_none_is_the_plain_policy(tmp_path, capsys):
    ws = tmp_path / "ws"
    _run(capsys, ws, "init")
    rc, out, _ = _run(capsys, ws, "generate", "--model", "tiny", "--system", "none", "--limit", "1",
                      "--max-new-tokens", "3")
    assert rc == 0 and json.loads(out)["origin"] == "policy"


def test_cli_train_stores_absolute_paths(tmp_path, capsys, monkeypatch):
    """A relative --snapshot / --out is relative to where the command runs; config.yaml stores them absolute,
    so the run directory (and --resume) works from anywhere."""
    (tmp_path / "snap").mkdir()
    monkeypatch.chdir(tmp_path)
    rc, out, _ = _run(capsys, tmp_path / "ws", "train", "--snapshot", "snap", "--method", "sft", "--out", "run",
                      "--show-config")
    assert rc == 0
    assert f"snapshot: {tmp_path / 'snap'}" in out and f"output_dir: {tmp_path / 'run'}" in out


def test_cli_preview_batched_equals_one_prompt_at_a_time(tmp_path, capsys):
    """`preview` decodes every prompt x side in one batch, yet each side of each prompt gets exactly what it gets
    alone (same seeds: sample_seed(seed, 0, j)); the metrics and the pool work as in the Studio tab."""
    from neat_studio.generation import GenParams, generate
    from neat_studio.studio import Studio
    from neat_studio.config import Workspace

    ws = tmp_path / "ws"
    _run(capsys, ws, "init")
    # float32 (as `--dtype auto` gives on a CPU without bf16 instructions): the equality below is exact there
    rc, out, err = _run(capsys, ws, "preview", "toxic", "--model", "tiny", "--n", "3", "--seed", "5",
                        "--temperature", "0", "--max-new-tokens", "6", "--pool", "--dtype", "float32")
    assert rc == 0, err
    pv = json.loads(out)
    k = 2  # the toxic preset's stored parameters ask for 2 samples per side
    assert pv["ref"] == "toxic@1" and len(pv["rows"]) == 3 and pv["metrics"]["n"] == 3 * k
    assert pv["pool"]["prompts"] == 3
    with Studio(Workspace(ws), model_spec="tiny", gen_dtype="float32") as st:
        lm = st.policy()
        neg = st.store.resolve_ref("toxic@1")["text"]
        for row in pv["rows"]:
            msgs = st.store.get_prompt(row["prompt_id"])["messages"]
            p = GenParams(temperature=0, max_new_tokens=6, seed=5, k=k)
            assert row["normal"] == [s.text for s in generate(lm, [msgs], params=p)[0]]
            assert row["negative"] == [s.text for s in generate(lm, [msgs], system=neg, params=p)[0]]
            assert {r["origin"] for r in st.store.list_responses(row["prompt_id"])} >= {"policy", "negative:toxic@1"}
    rc, _, err = _run(capsys, ws, "preview", "no_such@1", "--model", "tiny")
    assert rc == 2 and "no_such" in err


def test_preview_streams_all_prompts_and_stops_when_closed(tmp_path):
    from neat_studio.config import Workspace
    from neat_studio.studio import Studio

    with Studio(Workspace(tmp_path / "ws"), model_spec="tiny") as st:
        st.init(actor="t")
        ids = st.sample_for_preview("random", 4, seed=1)
        events = list(st.run_preview("toxic", ids, params={"max_new_tokens": 24, "k": 2}, seed=1))
        kinds = [e[0] for e in events]
        assert kinds[-1] == "done" and kinds.count("row") == 4 and set(kinds) <= {"rows", "row", "done"}
        pv = events[-1][3]
        assert all(len(r["normal"]) == 2 and len(r["negative"]) == 2 for r in pv["rows"])
        for e in events:
            if e[0] == "rows":
                assert [r["prompt_id"] for r in e[3]] == ids  # every prompt is on screen while it streams
        # closing the generator early (Stop in the UI) stops generation and saves nothing
        before = st.get_preview("toxic@1")
        g = st.run_preview("toxic", ids, params={"max_new_tokens": 64}, seed=2)
        next(g)
        g.close()
        assert st.get_preview("toxic@1") == before


def test_cli_prompts_list_add_tag_split_and_import_keeps_split(tmp_path, capsys):
    """The Prompts tab's list / add / tag / move-to-split from the CLI; a re-import with another split never moves a
    stored prompt, and says so (split_kept)."""
    ws = tmp_path / "ws"
    _run(capsys, ws, "init")
    rc, out, _ = _run(capsys, ws, "prompts", "add", "What is 2+2?", "--tags", "math,test", "--split", "dev")
    pid = json.loads(out)["id"]
    assert rc == 0 and not json.loads(out)["existing"]
    rc, out, _ = _run(capsys, ws, "prompts", "list", "2+2")
    listed = json.loads(out)
    assert listed["total"] == 1 and listed["prompts"][0]["split"] == "dev"
    assert listed["prompts"][0]["tags"] == ["math", "test"]
    rc, out, _ = _run(capsys, ws, "prompts", "tag", pid, "--tags", "test", "--mode", "remove")
    assert rc == 0 and json.loads(out) == {"changed": 1}
    assert json.loads(_run(capsys, ws, "prompts", "split", "test", pid)[1]) == {"moved": 1, "split": "test"}
    rc, out, _ = _run(capsys, ws, "prompts", "list", "--split", "test", "--tag", "math")
    assert [(p["id"], p["tags"]) for p in json.loads(out)["prompts"]] == [(pid, ["math"])]
    (tmp_path / "p.jsonl").write_text('{"prompt": "What is 2+2?"}\n')
    rc, out, err = _run(capsys, ws, "import", str(tmp_path / "p.jsonl"), "--split", "train")
    assert rc == 0 and json.loads(out)["split_kept"] == 1 and "kept it" in err
    assert json.loads(_run(capsys, ws, "prompts", "list", "2+2")[1])["prompts"][0]["split"] == "test"
    rc, _, err = _run(capsys, ws, "prompts", "split", "nowhere", pid)
    assert rc == 2 and err.startswith("error: split must be one of")
    rc, _, err = _run(capsys, ws, "prompts", "tag", "--tags", "x")
    assert rc == 2 and err.startswith("error: select at least one prompt")


def test_cli_resume_refuses_options_it_would_ignore(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("method: sft\n")
    rc, _, err = _run(capsys, tmp_path / "ws", "train", "--resume", str(run), "--set", "max_steps=3", "--method", "dpo")
    assert rc == 2 and err.startswith("error: --resume continues the run with its own config.yaml; --method, --set")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # nothing written into that run


def test_cli_library_versions_keep_what_is_not_given(tmp_path, capsys):
    ws = tmp_path / "ws"
    _run(capsys, ws, "init")
    rc, out, _ = _run(capsys, ws, "library", "save", "nasty", "--kind", "positive", "--text", "Be kind.\nAlways.",
                      "--params", '{"temperature": 0.9, "k": 2}', "--tag", "t1")
    assert rc == 0 and json.loads(out) == {"name": "nasty", "version": 1}
    # a params-only version: text, kind and tags are the latest version's
    rc, out, _ = _run(capsys, ws, "library", "save", "nasty", "--params", '{"temperature": 0.5, "k": 2}')
    assert rc == 0 and json.loads(out)["version"] == 2
    # a text-only version keeps the parameters
    rc, out, _ = _run(capsys, ws, "library", "save", "nasty", "--text", "Be kind.\nAlways, really.")
    assert rc == 0 and json.loads(out)["version"] == 3
    rc, out, _ = _run(capsys, ws, "library", "versions", "nasty")
    vs = json.loads(out)
    assert [(v["kind"], v["text"], v["params"], v["tags"]) for v in vs] == [
        ("positive", "Be kind.\nAlways.", {"temperature": 0.9, "k": 2}, ["t1"]),
        ("positive", "Be kind.\nAlways.", {"temperature": 0.5, "k": 2}, ["t1"]),
        ("positive", "Be kind.\nAlways, really.", {"temperature": 0.5, "k": 2}, ["t1"])]
    # diff: every line on its own line (no final newline in the texts), parameters shown when they differ
    rc, out, _ = _run(capsys, ws, "library", "diff", "nasty", "--a", "1", "--b", "3")
    assert rc == 0
    lines = out.splitlines()
    assert "-Always." in lines and "+Always, really." in lines
    assert "-temperature = 0.9" in lines and "+temperature = 0.5" in lines and " k = 2" not in lines[:3]
    rc, out, _ = _run(capsys, ws, "library", "diff", "nasty", "--a", "1", "--b", "2")
    assert out.startswith("(text: no difference)\n") and "+temperature = 0.5" in out.splitlines()
    # unknown names and bad JSON: one clear error, nothing written
    rc, _, err = _run(capsys, ws, "library", "versions", "nope")
    assert rc == 2 and err == "error: no system prompt named 'nope' (see: library list)\n"
    rc, _, err = _run(capsys, ws, "library", "save", "nasty", "--params", "{temperature: 1}")
    assert rc == 2 and err.startswith("error: --params must be a JSON object")
    rc, _, err = _run(capsys, ws, "library", "save", "fresh")
    assert rc == 2 and err == "error: give the prompt text (--text or --file)\n"
    rc, out, _ = _run(capsys, ws, "library", "versions", "nasty")
    assert len(json.loads(out)) == 3


def test_cli_bad_marks_and_preview_counts_are_clear_errors(tmp_path, capsys):
    ws = tmp_path / "ws"
    _run(capsys, ws, "init")
    rc, out, _ = _run(capsys, ws, "prompts", "list")
    pid = json.loads(out)["prompts"][0]["id"]
    rc, _, err = _run(capsys, ws, "annotate", pid, "--ranking", "a;b", "--mark", "abc")
    assert rc == 2 and err == "error: --mark must look like RESPONSE_ID=pos|neg|neutral, not 'abc'\n"
    rc, _, err = _run(capsys, ws, "preview", "toxic", "--model", "tiny", "--n", "-1")
    assert rc == 2 and err == "error: the number of prompts to preview must be at least 1, not -1\n"


def test_cli_runs_from_any_folder(tmp_path):
    """scripts/setup.sh points the venv at this checkout, so `.venv/bin/python -m neat_studio` works outside the
    repository root too (the default workspace stays the checkout's data/)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    repo = Path(__file__).resolve().parents[1]
    if Path(sys.prefix).resolve() != (repo / ".venv").resolve():
        pytest.skip("not the checkout's .venv (made by scripts/setup.sh)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-m", "neat_studio", "--help"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "init" in r.stdout and "train" in r.stdout
