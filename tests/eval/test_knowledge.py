"""lmforge/eval/knowledge.py: the synthetic world, its known/unknown split, documents and
questions."""

from __future__ import annotations

import pytest

from lmforge.eval.knowledge import fact_documents, knowledge_world, question_items, split_people


def test_world_is_seeded_with_distinct_names_and_a_disjoint_split():
    people = knowledge_world(50, seed=1)
    assert people == knowledge_world(50, seed=1) != knowledge_world(50, seed=2)
    assert len({p.name for p in people}) == 50
    known, unknown = split_people(people, 0.6, seed=0)
    assert len(known) == 30 and len(unknown) == 20
    assert {p.name for p in known}.isdisjoint(p.name for p in unknown)
    with pytest.raises(ValueError, match="known_fraction"):
        split_people(people, 1.0)


def test_documents_state_every_fact_and_questions_check_the_first_line():
    person = knowledge_world(1)[0]
    (doc,) = fact_documents([person])
    assert f"{person.name} was born in {person.city}." in doc
    assert f"Q: In which year was {person.name} born? A: {person.year}" in doc
    items = question_items([person])
    assert [i.reference for i in items] == [person.city, str(person.year), person.job]
    city = items[0]
    assert city.prompt == f"Q: Where was {person.name} born? A:"
    assert city.check(f" {person.city}\nQ: something else") and not city.check("Nowhere")


def test_chat_style_questions_and_documents_render_through_the_folders_template(chat_model_dir):
    from lmforge.eval.accuracy import encode_prompt
    from lmforge.eval.knowledge import Person, question_text
    from lmforge.tokenizer import load_tokenizer

    tok = load_tokenizer(chat_model_dir)
    person = Person("Bo Ka", "Dunmere", 1950, "poet")
    (plain,) = question_items([person], ["city"])
    (chat,) = question_items([person], ["city"], chat=True)
    assert chat.prompt == [{"role": "user", "content": "Where was Bo Ka born?"}]
    assert question_text(chat) == question_text(plain) == "Where was Bo Ka born?"
    assert chat.check("Dunmere\n<|im_end|>") and not chat.check("Eastvale")
    assert encode_prompt(tok, chat.prompt, chat=False) == tok.encode(
        f"{tok.bos_token}<|im_start|>user\nWhere was Bo Ka born?<|im_end|>\n<|im_start|>assistant\n"
    )  # the folder's (ChatML) template, ending with the assistant turn's opening
    (doc,) = fact_documents([person], render_chat=tok.apply_chat_template)
    turn = "<|im_start|>user\nWhat is the job of Bo Ka?<|im_end|>\n<|im_start|>assistant\npoet"
    assert turn in doc and "Q:" not in doc and "Bo Ka was born in Dunmere." in doc
