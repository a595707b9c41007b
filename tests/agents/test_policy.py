"""Policies: a random tiny VLM decoding through the engine with screenshots writes only
parseable, on-screen responses under the grammar; its prompt is the training layout; the
expert oracle answers like the expert. Pointer models: every coordinate action (click,
drag, scroll, …; constrained and unconstrained) is completed by pointing and parses; the
greedy click is `pointer_point` of `model.point` on the recorded ids; recorded pointer
log-probs equal an independent recomputation; spliced tokens are flagged and unscored; a
sampled token that runs past the query is cut and the prefix re-encoded. With
``typing="instruction"`` each request's grammar lets ``type`` write only its own
instruction's spans; with ``thoughts="expert"`` its thought is a sentence of the expert's
language whose slots copy those spans (sampled thoughts match it; the expert's own
responses are admitted, free text is not)."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from lmforge.agents.action_grammar import instruction_spans, response_regex
from lmforge.agents.actions import Type, action_point, parse_response
from lmforge.agents.agent_data import make_agent_dataset
from lmforge.agents.env import GUIEnv
from lmforge.agents.expert import expert_step
from lmforge.agents.grounded import grounding_query
from lmforge.agents.policy import (
    AgentContext,
    ExpertPolicy,
    Pointing,
    VLMPolicy,
    agent_messages,
)
from lmforge.agents.tasks import sample_task
from lmforge.agents.thoughts import thought_regex
from lmforge.models.pointer_head import pointer_point, to_pixels, token_centre
from lmforge.models.vlm import VisionLanguageModel
from lmforge.tokenizer import Tokenizer
from lmforge.train.vlm_sft import VLMSection, image_processor_for, tiny_vlm
from lmforge.vision.processor import QWEN2_VL_CHAT_TEMPLATE
from lmforge.vision.vlm_data import VLM_SPECIAL_TOKENS, encode_prompt

# the plain grammar (a test's own `policy.regex` applies) and clicks pointed in the
# episode's context — not `VLMPolicy`'s defaults (typing and thoughts held, grounded clicks)
PLAIN = {"typing": "free", "thoughts": "free", "clicks": "pointer"}


@pytest.fixture(scope="module")
def vlm():
    data = make_agent_dataset("train", num_tasks=4, seed=1)
    texts = [ex.question + " " + ex.answer for k in data for ex in data[k]]
    tok = Tokenizer.train(texts, vocab_size=400, min_frequency=1, special_tokens=VLM_SPECIAL_TOKENS,
                          chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    section = VLMSection(patch_size=8, vision_hidden=32, vision_heads=2, hidden_size=32, num_layers=1,
                         num_heads=2, num_kv_heads=1, vocab_size=tok.vocab_size)  # fmt: skip
    torch.manual_seed(0)
    model = tiny_vlm(section, tok)
    return model, tok, image_processor_for(model, 128), data


def contexts(n: int) -> list[AgentContext]:
    out = []
    for seed in range(n):
        env = GUIEnv()
        obs, info = env.reset(options={"task": sample_task(seed, "heldout")})
        out.append(AgentContext(info["instruction"], [obs, obs], ["click(1,2)"], env))
    return out


def test_prompt_has_the_training_layout(vlm):
    *_, data = vlm
    ex = next(e for e in data["trajectory"] if len(e.images) == 2)
    c = AgentContext("x", list(ex.images), [])
    messages, images = agent_messages(c, history=2)
    assert len(images) == 2 and messages[0]["content"][:2] == [{"type": "image"}] * 2
    c = AgentContext(ex.question.split("\n")[0].removeprefix("Task: "), [ex.images[0]] * 5, [])
    assert len(agent_messages(c, history=3)[1]) == 3


def test_constrained_vlm_policy_only_writes_valid_actions(vlm):
    model, tok, proc, _ = vlm
    policy = VLMPolicy(
        model, tok, proc, screen=(128, 128), history=2, temperature=1.0, seed=3, **PLAIN
    )
    texts = policy.act(contexts(6))
    assert len(texts) == 6
    for text in texts:
        parse_response(text, (128, 128))
    first, second = (VLMPolicy(model, tok, proc, temperature=0.0, **PLAIN) for _ in range(2))
    assert first.act(contexts(2)) == second.act(contexts(2))  # greedy is reproducible
    with pytest.raises(ValueError, match="history=0"):
        VLMPolicy(model, tok, proc, history=0, **PLAIN)


def accepts(constraint, tok, text: str) -> bool:
    """Whether ``constraint`` lets ``text``'s tokens through, one by one, to its end."""
    for t in tok.encode(text):
        if not constraint.allowed(t):
            return False
        constraint.accept(t)
    return constraint.is_finished() or constraint.allowed(tok.token_to_id("<|im_end|>"))


def test_typing_held_to_the_instruction(vlm):
    model, tok, proc, _ = vlm
    with pytest.raises(ValueError, match="typing='any'"):
        VLMPolicy(model, tok, proc, typing="any", thoughts="free", clicks="pointer")
    held = VLMPolicy(model, tok, proc, temperature=1.0, seed=2, typing="instruction",
                     thoughts="free", clicks="pointer")  # fmt: skip
    free = VLMPolicy(model, tok, proc, temperature=1.0, seed=2, **PLAIN)
    for c in contexts(4):
        spans = instruction_spans(c.instruction)
        spec = held.params(0, 10, c.instruction).constraint.spec
        assert spec.text == response_regex((128, 128), spans)
        assert free.params(0, 10, c.instruction).constraint.spec.text == response_regex((128, 128))
        word = max(spans, key=len)  # the instruction's longest span: typed under both
        typed = f"Thought: I type.\nAction: type('{word}')"
        other = "Thought: I type.\nAction: type('zzz')"
        assert accepts(held.params(0, 10, c.instruction).constraint, tok, typed)
        assert not accepts(held.params(0, 10, c.instruction).constraint, tok, other)
        assert accepts(free.params(0, 10, c.instruction).constraint, tok, other)
    for text, c in zip(held.act(contexts(4)), contexts(4), strict=True):
        action = parse_response(text, (128, 128)).action  # still always parses
        if isinstance(action, Type):
            assert action.content in instruction_spans(c.instruction)


def test_thoughts_held_to_the_experts_language(vlm):
    model, tok, proc, _ = vlm
    with pytest.raises(ValueError, match="thoughts='any'"):
        VLMPolicy(model, tok, proc, thoughts="any", typing="free", clicks="pointer")
    held = VLMPolicy(model, tok, proc, temperature=1.0, seed=3, thoughts="expert",
                     typing="free", clicks="pointer")  # fmt: skip
    both = VLMPolicy(model, tok, proc, temperature=1.0, seed=3, thoughts="expert",
                     typing="instruction", clicks="pointer")  # fmt: skip
    for c in contexts(3):
        spans = instruction_spans(c.instruction)
        thought = thought_regex(spans)
        assert held.params(0, 10, c.instruction).constraint.spec.text == response_regex(
            (128, 128), None, thought
        )
        assert both.params(0, 10, c.instruction).constraint.spec.text == response_regex(
            (128, 128), spans, thought
        )
        expert = ExpertPolicy().act([c])[0]  # the expert's own response is admitted …
        assert accepts(held.params(0, 10, c.instruction).constraint, tok, expert)
        free = "Thought: I think the list is fine.\nAction: wait()"  # … free text is not
        assert not accepts(held.params(0, 10, c.instruction).constraint, tok, free)
        assert accepts(VLMPolicy(model, tok, proc, **PLAIN).params(0, 10).constraint, tok, free)
    for text, c in zip(both.act(contexts(4)), contexts(4), strict=True):
        response = parse_response(text, (128, 128))  # sampled: parses, in the language
        assert re.fullmatch(thought_regex(instruction_spans(c.instruction)), response.thought)


def test_expert_policy_answers_as_the_expert():
    cs = contexts(3)
    for c, text in zip(cs, ExpertPolicy().act(cs), strict=True):
        step = expert_step(c.env.task, c.env.window)
        assert parse_response(text).action == step.action


def test_long_histories_get_the_context_room_left_not_a_crash(vlm):
    model, tok, proc, _ = vlm
    policy = VLMPolicy(model, tok, proc, history=2, max_tokens=160, temperature=1.0, seed=5,
                       constrained=False, **PLAIN)  # fmt: skip
    limit = policy.engine.max_len
    assert policy.params(0, limit - 40).max_tokens == 40
    assert policy.params(0, 10).max_tokens == 160
    with pytest.raises(ValueError, match="fills the model's context"):
        policy.params(0, limit)
    long = [AgentContext(c.instruction, c.screenshots, ["type('" + "abc " * n + "')"] * 2,
                         c.env) for c, n in zip(contexts(2), (110, 120))]  # fmt: skip
    samples = policy.sample(long)
    assert all(limit - 160 < len(s.prompt_ids) < limit for s in samples)  # less room than asked
    for sample in samples:
        assert len(sample.prompt_ids) + len(sample.token_ids) <= limit


# ---------------------------------------------------------------------- pointer policies
def with_pointer(model, size: int = 16, seed: int = 0):
    """A copy of ``model`` with a (random) pointer head of width ``size``."""
    config = replace(model.config, pointer_size=size)
    torch.manual_seed(seed)
    out = VisionLanguageModel(config)
    out.load_state_dict(model.state_dict(), strict=False)
    return out


@pytest.fixture(scope="module")
def pvlm(vlm):
    model, tok, proc, data = vlm
    return with_pointer(model), tok, proc, data


def pointing_regex(name: str) -> str:
    """Responses that always take coordinate action ``name`` (the rest of its arguments do
    not matter: the policy splices them)."""
    return f"Thought: [a-z ]{{1,8}}\\nAction: {name}\\([0-9]{{1,3}},[0-9]{{1,3}}\\)"


def image_tokens(model, ids: list[int], grid: torch.Tensor, image: int) -> torch.Tensor:
    """The positions of image ``image``'s tokens in ``ids``."""
    merge = model.config.vision.spatial_merge_size
    counts = [int(t * h * w) // merge**2 for t, h, w in grid.tolist()]
    where = (torch.tensor(ids) == model.config.image_token_id).nonzero().flatten()
    start = sum(counts[:image])
    return where[start : start + counts[image]]


def check_pointer_sample(model, tok, sample, screen=(128, 128)) -> None:
    """Parses (and is in the grammar); spliced tokens flagged and unscored; each pointer's
    query token ends with ( or ,; its log-prob is log-softmax of the pointer head's logits
    recomputed here from a plain forward."""
    response = parse_response(sample.text, screen)
    assert re.fullmatch(response_regex(screen), sample.text)
    assert tok.decode(sample.token_ids, skip_special_tokens=True) == sample.text
    assert sample.token_ids[-1] == tok.token_to_id("<|im_end|>") and not sample.sampled[-1]
    n_prompt = len(sample.prompt_ids)
    full = sample.prompt_ids + sample.token_ids
    assert len(sample.pointers) == (2 if type(response.action).__name__ == "Drag" else 1)
    for p in sample.pointers:
        assert tok.decode([full[p.position]])[-1] in "(,"
        assert p.image == sample.image_grid_thw.shape[0] - 1
        after = p.position + 1 - n_prompt  # the spliced coordinates follow the query
        digits = tok.encode(f"{p.point[0]},{p.point[1]}")
        assert sample.token_ids[after : after + len(digits)] == digits
        assert not any(sample.sampled[after : after + len(digits)])
        ids = full[: p.position + 1]
        with torch.no_grad():
            hidden = model(torch.tensor([ids]), sample.pixel_values, sample.image_grid_thw,
                           output_hidden_states=True).hidden_states[0]  # fmt: skip
            keys = hidden[image_tokens(model, ids, sample.image_grid_thw, p.image)]
            logits = model.pointer_head(hidden[-1:], keys[None])[0]
        assert logits.shape[0] == p.grid[0] * p.grid[1]
        assert p.logprob == pytest.approx(float(torch.log_softmax(logits, -1)[p.index]), abs=1e-5)
    for lp, kept in zip(sample.logprobs, sample.sampled, strict=True):
        assert (lp is not None) == kept  # logprobs asked for: every sampled token is scored


@pytest.mark.parametrize("name", ["click", "drag", "scroll", "right_single"])
def test_pointer_policy_points_and_records_its_choices(pvlm, name):
    model, tok, proc, _ = pvlm
    for temperature in (0.0, 1.0):
        policy = VLMPolicy(
            model, tok, proc, temperature=temperature, seed=4, logprobs=True, **PLAIN
        )
        assert policy.pointer  # auto: the model has a head
        policy.regex = pointing_regex(name)
        for sample in policy.sample(contexts(3)):
            check_pointer_sample(model, tok, sample)
            assert sample.text.split("Action: ")[1].startswith(name + "(")
            for p in sample.pointers:
                if temperature > 0:  # a sampled token's centre (greedy: the next test)
                    assert p.point == to_pixels(token_centre(p.index, p.grid), (128, 128))


def test_splice_point_takes_a_forced_choice_and_records_it(pvlm):
    """`VLMPolicy.splice_point` with a chooser other than the policy's own (the expert's, in
    `lmforge.agents.guidance`): the chosen token and point recorded with the current
    log-prob, ``x,y`` + suffix spliced unsampled; a chooser returning None adds nothing."""
    model, tok, proc, _ = pvlm
    policy = VLMPolicy(model, tok, proc, temperature=1.0, logprobs=True, **PLAIN)
    context = contexts(1)[0]
    messages, images = agent_messages(context, policy.history)
    prompt, pixels, grid = encode_prompt(tok, proc, messages, images)
    head = tok.encode("Thought: go\nAction: click(")
    p = Pointing("click", list(head), [None] * len(head), [True] * len(head))
    seen = []

    def forced(logits, cells):
        seen.append((logits.shape[0], cells))
        return 3, (17, 40)

    assert policy.splice_point(p, prompt, pixels, grid, ")", forced)
    (choice,) = p.pointers
    assert seen == [(choice.grid[0] * choice.grid[1], choice.grid)]
    assert (choice.index, choice.point, choice.position) == (3, (17, 40), len(prompt + head) - 1)
    logits, _ = policy.pointer_logits(prompt + head, pixels, grid, grid.shape[0] - 1)
    assert choice.logprob == pytest.approx(float(logits.log_softmax(-1)[3]))
    spliced = tok.encode("17,40)")
    assert p.ids == head + spliced and p.sampled == [True] * len(head) + [False] * len(spliced)
    assert p.logprobs == [None] * len(p.ids)
    before = (list(p.ids), len(p.pointers))
    assert not policy.splice_point(p, prompt, pixels, grid, ")", lambda logits, cells: None)
    assert (p.ids, len(p.pointers)) == before


def test_greedy_pointer_click_is_the_pointer_readout_of_the_recorded_ids(pvlm):
    model, tok, proc, _ = pvlm
    policy = VLMPolicy(model, tok, proc, temperature=0.0, logprobs=True, **PLAIN)
    policy.regex = pointing_regex("click")  # every response points (an untrained model's choice)
    samples = policy.sample(contexts(4))
    assert all(s.pointers for s in samples)
    for sample in samples:
        check_pointer_sample(model, tok, sample)
        full = sample.prompt_ids + sample.token_ids
        for p in sample.pointers:
            logits, grids = model.point(torch.tensor([full[: p.position + 1]]),
                                        sample.pixel_values, sample.image_grid_thw)  # fmt: skip
            probs = logits.softmax(-1)
            assert grids[0] == p.grid and p.index == int(probs[0].argmax())
            assert p.point == to_pixels(pointer_point(probs[0], grids[0]), (128, 128))
        action = parse_response(sample.text).action
        assert action_point(action) == sample.pointers[0].point
    again = VLMPolicy(model, tok, proc, temperature=0.0, **PLAIN)
    again.regex = policy.regex
    assert again.act(contexts(4)) == [s.text.strip() for s in samples]  # greedy: reproducible


def test_greedy_pointer_while_sampling_the_text(pvlm):
    """``greedy_pointer``: the text is sampled, the click is the pointer's readout at the
    sample's own query (as evaluation clicks), and no pointer choice is recorded."""
    model, tok, proc, _ = pvlm
    policy = VLMPolicy(model, tok, proc, temperature=1.0, seed=6, logprobs=True,
                       greedy_pointer=True, **PLAIN)  # fmt: skip
    policy.regex = pointing_regex("click")
    for sample in policy.sample(contexts(3)):
        assert sample.pointers == []
        action = parse_response(sample.text, (128, 128)).action
        full = sample.prompt_ids + sample.token_ids
        query = len(sample.prompt_ids) + len(tok.encode(sample.text.split("click(")[0] + "click("))
        logits, grids = model.point(torch.tensor([full[:query]]), sample.pixel_values,
                                    sample.image_grid_thw)  # fmt: skip
        assert action_point(action) == to_pixels(pointer_point(logits.softmax(-1)[0], grids[0]),
                                                  (128, 128))  # fmt: skip
        assert not any(sample.sampled[query - len(sample.prompt_ids) :])  # spliced


def test_grounded_clicks_point_from_the_thoughts_grounding_question(pvlm):
    """``clicks="grounded"``: a click whose thought names an element is the pointer's greedy
    readout on that element's grounding question about the current screenshot (even while
    sampling), recorded nowhere; a thought that names none points from the context as
    before (recorded); unknown modes are refused; a model without a head writes its clicks as
    text whatever ``clicks`` says."""
    model, tok, proc, _ = pvlm
    cs = contexts(3)
    for temperature in (0.0, 1.0):
        policy = VLMPolicy(model, tok, proc, temperature=temperature, seed=2, logprobs=True,
                           clicks="grounded", typing="free", thoughts="free")  # fmt: skip
        policy.regex = ("Thought: Everything is set; I press (Save|OK)\\.\\nAction: "
                        "click\\([0-9]{1,3},[0-9]{1,3}\\)")  # fmt: skip
        for c, sample in zip(cs, policy.sample(cs), strict=True):
            assert sample.pointers == []
            button = sample.text.split("I press ")[1].split(".")[0]
            ids, pixels, grid = grounding_query(tok, proc, "button", button, c.screenshots[-1])
            logits, grids = model.point(torch.tensor([ids]), pixels, grid)
            want = to_pixels(pointer_point(logits.softmax(-1)[0], grids[0]), (128, 128))
            assert action_point(parse_response(sample.text, (128, 128)).action) == want
            assert not sample.sampled[-1] and sample.token_ids[-1] == tok.token_to_id("<|im_end|>")
        policy.regex = pointing_regex("click")  # free thoughts name nothing: pointed in context
        for sample in policy.sample(cs):
            check_pointer_sample(model, tok, sample)
    with pytest.raises(ValueError, match="clicks"):
        VLMPolicy(model, tok, proc, clicks="nearest", typing="free", thoughts="free")
    bare = VLMPolicy(
        vlm_without_head(pvlm), tok, proc, clicks="grounded", typing="free", thoughts="free"
    )
    assert not bare.pointer and len(bare.act(cs)) == len(cs)


def overfit(model, tok, proc, cs, answer: str, steps: int = 80):
    """``model`` taught to write ``answer`` to each of ``cs``'s prompts (a stand-in for an
    SFT agent, so an unconstrained policy reaches a coordinate action)."""
    batch = []
    for c in cs:
        prompt, pixels, grid = encode_prompt(tok, proc, *agent_messages(c, 2))
        target = tok.encode(answer)
        batch.append((torch.tensor([prompt + target]), pixels, grid, len(prompt)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        for ids, pixels, grid, n in batch:
            logits = model(ids, pixels, grid).logits[0, n - 1 : -1]
            torch.nn.functional.cross_entropy(logits, ids[0, n:]).backward()
        opt.step()
    return model.eval()


def test_unconstrained_pointer_policy_writes_parseable_actions(pvlm):
    model, tok, proc, _ = pvlm
    cs = contexts(2)
    for name in ("drag", "scroll"):
        taught = overfit(copy.deepcopy(model), tok, proc, cs, f"Thought: go\nAction: {name}(")
        policy = VLMPolicy(
            taught, tok, proc, temperature=0.0, constrained=False, logprobs=True, **PLAIN
        )
        for sample in policy.sample(cs):
            check_pointer_sample(taught, tok, sample)
            assert sample.text.startswith(f"Thought: go\nAction: {name}(")
    # a pointer model can still decode its coordinates as text
    text_policy = VLMPolicy(model, tok, proc, temperature=1.0, seed=3, pointer=False, **PLAIN)
    assert all(not s.pointers for s in text_policy.sample(contexts(2)))
    with pytest.raises(ValueError, match="pointer head"):
        VLMPolicy(vlm_without_head(pvlm), tok, proc, pointer=True, **PLAIN)


def vlm_without_head(pvlm):
    model = copy.deepcopy(pvlm[0])
    model.pointer_head = None
    return model


def test_a_token_past_the_query_is_cut_and_the_prefix_re_encoded():
    texts = ["Thought: a\nAction: click((1,2)) drag((3", "type('x') click((5"] * 20
    tok = Tokenizer.train(texts, vocab_size=300, min_frequency=1, special_tokens=VLM_SPECIAL_TOKENS,
                          chat_template=QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
    over = tok.token_to_id("((")
    assert over is not None
    stand_in = SimpleNamespace(tokenizer=tok)
    head = tok.encode("Thought: a\nAction: click")
    ids, scores = [], [-0.5] * (len(head) + 1)
    hit = VLMPolicy._reached_query(stand_in, ids, scores, head + [over, 7])
    assert hit.name == "click" and ids == head + [over]  # stops at the query, ignores the rest
    assert tok.decode(hit.ids) == "Thought: a\nAction: click("
    assert hit.ids[: len(head)] == head and hit.sampled == [True] * len(head) + [False]
    assert hit.logprobs == [-0.5] * len(head) + [None]
    exact = VLMPolicy._reached_query(stand_in, [], [], tok.encode("Thought: a\nAction: scroll(1"))
    assert exact.name == "scroll" and tok.decode(exact.ids).endswith("scroll(")
    assert all(exact.sampled) and exact.logprobs == [None] * len(exact.ids)
    assert (
        VLMPolicy._reached_query(stand_in, [], [], tok.encode("Thought: click(\nAction: t")) is None
    )
