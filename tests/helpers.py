"""Small data builders shared by tests."""


def bread_records(n: int = 12) -> list[dict]:
    """n ranked import records: a recipe (chosen) above a needless refusal (rejected), one prompt each."""
    return [{"messages": [{"role": "user", "content": f"How do I bake bread, variant {i}?"}], "source": "t",
             "responses": [{"text": f"Mix flour, water, yeast and salt; knead, rise, bake (recipe {i}).",
                            "origin": "dataset:chosen", "rank": 0},
                           {"text": "I cannot help with that request.", "origin": "dataset:rejected", "rank": 1}]}
            for i in range(n)]
