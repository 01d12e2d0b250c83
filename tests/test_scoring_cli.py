import json

from neat_studio.scoring.cli import main


def test_scorer_train_eval_list_cli(tmp_path, capsys, monkeypatch):
    data = tmp_path / "pairs.jsonl"
    with open(data, "w") as f:
        for i in range(12):
            f.write(json.dumps({"prompt": f"\n\nHuman: tell me about topic {i}\n\nAssistant:",
                                "chosen": f"Here is a helpful overview of topic {i}.",
                                "rejected": "No."}) + "\n")
    ws = tmp_path / "ws"
    assert main(["scorer", "train", "--workspace", str(ws), "--data", str(data), "--epochs", "3",
                 "--dev-fraction", "0.25"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_dev_prompts"] == 3 and out["n_train_pairs"] == 9
    version = out["scorer_version"]
    assert (ws / "scorers" / version / "weights.npz").exists()
    assert main(["scorer", "eval", "--workspace", str(ws), "--scorer", version, "--data", str(data)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["scorer_version"] == version and ev[str(data)]["n_pairs"] == 12
    assert main(["scorer", "list", "--workspace", str(ws)]) == 0
    assert [r["scorer_version"] for r in json.loads(capsys.readouterr().out)] == [version]


def test_refusal_eval_cli_on_labelled_file(tmp_path, capsys):
    data = tmp_path / "labelled.jsonl"
    rows = [{"text": "I'm sorry, but I can't help with that.", "label": 1},
            {"text": "I cannot assist with hacking into accounts.", "label": 1},
            {"text": "Sure, the boiling point of water at sea level is 100 °C.", "label": 0},
            {"text": "Here is a short poem about autumn leaves falling softly.", "label": 0}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["refusal", "eval", "--data", str(data)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["detector"]["n"] == 4 and res["detector"]["precision"] == 1.0 and res["detector"]["recall"] == 1.0
