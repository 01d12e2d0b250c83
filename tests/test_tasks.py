"""Many annotators (issue 20): a save never silently replaces a ranking its author did not see, prompts are leased
while open, and a prompt leaves everyone's queue once it has the workspace's rankings per prompt."""
from __future__ import annotations

import pytest

from neat_studio.store import StaleAnnotationError


@pytest.fixture()
def st(tmp_path):
    from neat_studio.config import Workspace
    from neat_studio.studio import Studio

    s = Studio(Workspace(tmp_path / "ws").ensure(), model_spec="tiny")
    recs = [{"messages": [{"role": "user", "content": f"question {i}?"}], "source": "t", "split": "train",
             "responses": [{"text": f"good {i}", "origin": "dataset:chosen", "rank": 0},
                           {"text": f"bad {i}", "origin": "dataset:rejected", "rank": 1}]} for i in range(3)]
    s.store.import_records(recs, actor="t")
    yield s
    s.close()


def _rank(st, pid):
    ids = [r["id"] for r in st.store.list_responses(pid)]
    return [[ids[0]], [ids[1]]], {ids[0]: 1, ids[1]: 2}


def test_a_save_over_a_newer_annotation_is_refused_and_both_are_kept(st):
    pid = st.next_prompt("alice")
    loaded = st.annotation_item(pid, "alice")["annotation"]  # this tab: nothing saved yet
    assert loaded is None
    ranking, ranks = _rank(st, pid)
    other_tab = st.submit_ranking(pid, "alice", ranks, expect_latest=None)["annotation_id"]
    before = st.store.counts()["annotations"]
    reversed_ranks = {k: 3 - v for k, v in ranks.items()}
    with pytest.raises(StaleAnnotationError, match="newer annotation by alice") as e:
        st.submit_ranking(pid, "alice", reversed_ranks, comment="mine", expect_latest=None)
    assert e.value.current == other_tab
    assert st.store.counts()["annotations"] == before  # nothing replaced
    assert st.store.latest_annotation(pid, "alice")["id"] == other_tab
    refused = [a for a in st.store.audit(50) if a["action"] == "refuse_stale_annotation"]
    assert len(refused) == 1 and refused[0]["entity_id"] == other_tab
    assert refused[0]["detail"]["comment"] == "mine" and refused[0]["detail"]["ranking"] == ranking[::-1]
    # seen the newer one: saving over it is fine
    again = st.submit_ranking(pid, "alice", reversed_ranks, expect_latest=other_tab)["annotation_id"]
    assert st.store.latest_annotation(pid, "alice")["id"] == again != other_tab


def test_open_prompts_are_leased_and_a_ranked_prompt_leaves_the_queue(st):
    assert st.annotations_per_prompt() == 1
    a1 = st.next_prompt("alice")
    b1 = st.next_prompt("bob")
    assert a1 != b1  # alice holds a1: bob gets another prompt
    assert {(x["prompt_id"], x["annotator"]) for x in st.leases()} == {(a1, "alice"), (b1, "bob")}
    assert st.next_prompt("alice") == a1  # asking again keeps (renews) her prompt
    _, ranks = _rank(st, a1)
    st.submit_ranking(a1, "alice", ranks)
    assert (a1, "alice") not in {(x["prompt_id"], x["annotator"]) for x in st.leases()}  # saving ends the lease
    # a1 has its one ranking: it is nobody else's task any more
    assert a1 in st.store.taken_prompts("carol") and a1 not in st.store.taken_prompts("alice")
    c1 = st.next_prompt("carol")
    assert c1 not in (a1, b1)
    # bob skips: his lease ends and the prompt goes to whoever asks next
    st.skip_prompt(b1, "bob")
    assert b1 not in st.store.taken_prompts("dave")


def test_a_reload_gives_back_the_prompt_held_and_moving_on_returns_it(st):
    a1 = st.next_prompt("alice")
    b1 = st.next_prompt("bob")
    st.set_annotations_per_prompt(2, actor="admin")
    assert st.next_prompt("bob") == b1  # a reload: bob's open prompt, not the older a1 that is now free for two
    b2 = st.next_prompt("bob", skip_ids=[b1])  # "Next": he moves on, his lease on b1 ends
    assert b2 == a1 and st.store.held_prompts("bob") == [a1]
    assert b1 not in st.store.taken_prompts("carol")


def test_overlap_two_hands_a_prompt_to_two_people(st):
    with pytest.raises(ValueError, match="1 to 20"):
        st.set_annotations_per_prompt(0, actor="admin")
    assert st.annotations_per_prompt() == 1  # refused: nothing changed
    st.set_annotations_per_prompt(2, actor="admin")
    a1 = st.next_prompt("alice")
    assert st.next_prompt("bob") == a1  # the oldest prompt wants two rankings: bob gets it too
    c1 = st.next_prompt("carol")
    assert c1 != a1  # two people hold a1 now
    _, ranks = _rank(st, a1)
    st.submit_ranking(a1, "alice", ranks)
    st.submit_ranking(a1, "bob", ranks)
    assert a1 in st.store.taken_prompts("carol") and a1 in st.store.taken_prompts("dave")


def test_expired_leases_free_the_prompt(st, monkeypatch):
    from datetime import timedelta

    from neat_studio.store import tasks

    a1 = st.next_prompt("alice")
    later = tasks._now() + timedelta(seconds=tasks.LEASE_S + 1)
    monkeypatch.setattr(tasks, "_now", lambda: later)  # five minutes pass
    assert st.leases() == [] and st.next_prompt("bob") == a1


def test_task_overview_shows_shares_and_who_holds_what(st):
    a1 = st.next_prompt("alice")
    _, ranks = _rank(st, a1)
    st.submit_ranking(a1, "alice", ranks)
    b1 = st.next_prompt("bob")
    t = st.task_overview()
    assert (t["overlap"], t["total"], t["wanted"]) == (1, 3, 3)
    assert t["per_annotator"] == [{"annotator": "alice", "done": 1, "share": 2, "holds": 0},
                                  {"annotator": "bob", "done": 0, "share": 2, "holds": 1}]
    assert [(x["prompt_id"], x["annotator"]) for x in t["leases"]] == [(b1, "bob")]


def test_an_admin_assigns_prompts_to_one_annotator(st):
    ids = [p["id"] for p in st.store.list_prompts(limit=10, order="created")]
    assert st.assign_prompts([ids[2]], "carol", actor="admin") == 1
    assert st.next_prompt("carol") == ids[2]  # first in her queue
    assert st.next_prompt("dave") == ids[0] and ids[2] in st.store.taken_prompts("erin")
    lease = next(x for x in st.leases() if x["annotator"] == "carol")
    from datetime import datetime, timedelta, timezone

    until = datetime.fromisoformat(lease["expires_at"].replace("Z", "+00:00"))
    assert lease["prompt_id"] == ids[2] and until - datetime.now(timezone.utc) > timedelta(days=6)  # not minutes
    with pytest.raises(ValueError, match="unknown prompt"):
        st.assign_prompts(["nope"], "carol", actor="admin")
    with pytest.raises(ValueError, match="invalid annotator"):
        st.assign_prompts([ids[0]], "no way", actor="admin")
