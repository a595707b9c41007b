"""Tests for lmforge.agents.rl_config: the defaults and the recipe pass the checks, and each
out-of-range setting is refused with an error naming its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.agents.rl_config import GROUPINGS, AgentRLConfig, check_agent_rl_config
from lmforge.config import ConfigError
from lmforge.train.config import load_config

RECIPE = Path(__file__).resolve().parents[2] / "lmforge" / "recipes" / "agent-rl-tiny.yaml"
STREAM = "rl.train_grounded=true rl.ground_samples=4 rl.screen_questions=8"


def test_the_defaults_and_the_recipe_pass():
    check_agent_rl_config(load_config(None, [], AgentRLConfig))
    recipe = load_config(str(RECIPE), [], AgentRLConfig)
    check_agent_rl_config(recipe)
    assert recipe.rl.screen_questions > 0 and recipe.rl.groups in GROUPINGS
    check_agent_rl_config(load_config(None, f"{STREAM} rl.screen_focus=0.5".split(), AgentRLConfig))
    check_agent_rl_config(load_config(None, ["rl.templates=[list_open]"], AgentRLConfig))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ("rl.split=nowhere", "rl.split"),
        ("rl.groups=task", "rl.groups"),
        ("rl.group_size=1", "rl.group_size"),
        ("rl.screen_questions=8", "rl.screen_questions"),  # without its bandits
        (f"{STREAM} rl.screen_open_rate=1.5", "rl.screen_open_rate"),
        (f"{STREAM} rl.screen_focus=2", "rl.screen_focus"),
        ("rl.expert_starts=0.5 rl.groups=state", "rl.expert_starts"),
        ("rl.kl_coef=-1", "rl.kl_coef"),
        ("rl.state_tasks=-1", "rl.state_tasks"),
        ("rl.state_tasks=1 rl.groups=state", "rl.state_tasks"),
        ("rl.state_tasks=1 rl.state_weight=-1", "rl.state_weight"),
        ("rl.state_tasks=1 rl.state_max=0", "rl.state_max"),
        ("rl.templates=[tab_dropdown]", "rl.templates"),  # a held-out template in train's pool
        ("rl.templates=[list_open] rl.composed=true", "rl.templates"),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_field(overrides, field):
    config = load_config(None, overrides.split(), AgentRLConfig)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        check_agent_rl_config(config)
