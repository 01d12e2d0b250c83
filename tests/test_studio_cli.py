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
