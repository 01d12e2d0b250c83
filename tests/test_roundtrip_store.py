"""Import -> store -> export -> re-import -> export on the real HH-RLHF file reproduces the same pairs."""
import json

from neat_studio.config import Workspace
from neat_studio.studio import Studio
from tests.conftest import shared


def _pairs(path):
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        # json text: a conversational export (the default for chat data like HH) holds message lists
        out.add(tuple(json.dumps(r[k], ensure_ascii=False) for k in ("prompt", "chosen", "rejected")))
    return out


def test_hh_rlhf_import_export_reimport_same_pairs(tmp_path):
    src = shared("hh-rlhf", "harmless-base.test.jsonl.gz")
    with Studio(Workspace(tmp_path / "a").ensure()) as st:
        rep = st.import_file(src)
        assert rep["records"] == 2312
        # two dialogues occur twice verbatim in the file: same prompt, merged (content-addressed prompts)
        assert rep["prompts_added"] == 2310 and rep["responses_added"] == 4624
        assert st.import_file(src)["nothing_new"] is True  # re-import duplicates nothing
        rows = st.store.listwise_rows()
        assert len(rows) == 2310 and all(len(r["responses"]) >= 2 for r in rows)
        assert all(sorted(set(r["ranks"])) == [0, 1] for r in rows if len(r["responses"]) == 2)
        n = st.export("trl", tmp_path / "pairs.jsonl")
    first = _pairs(tmp_path / "pairs.jsonl")
    assert len(first) == n > 2300
    with Studio(Workspace(tmp_path / "b").ensure()) as st2:
        st2.import_file(tmp_path / "pairs.jsonl", fmt="trl")
        st2.export("trl", tmp_path / "pairs2.jsonl")
    assert _pairs(tmp_path / "pairs2.jsonl") == first
