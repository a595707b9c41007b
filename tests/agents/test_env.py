"""GUIEnv: every widget reacts to the actions as documented, episodes end and are rewarded
as the task says, invalid actions change nothing, seeds reproduce, and gymnasium's own
checker accepts the environment."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from lmforge.agents.actions import Click, Drag, Hotkey, LeftDouble, RightSingle, Scroll, Type, Wait
from lmforge.agents.env import SCROLL_ROWS, GUIEnv, to_action
from lmforge.agents.layout import layout_window
from lmforge.agents.tasks import Task, sample_task
from lmforge.agents.widgets import (
    Button,
    Checkbox,
    Dialog,
    Dropdown,
    Geometry,
    ListView,
    RadioGroup,
    ScrollPane,
    Tabs,
    TextField,
    Window,
    box_center,
)


def custom_env(dialog: bool = False, max_steps: int = 30) -> GUIEnv:
    pane = ScrollPane(
        "pane", "P", children=[Checkbox(f"c{i}", f"box {i}") for i in range(6)], visible=2
    )
    tabs = Tabs("tabs", "T", names=["A", "B"], pages=[[TextField("name", "Name", text="ab"),
                TextField("mail", "Mail")], [Checkbox("hidden", "Hidden")]])  # fmt: skip
    win = Window("W", 128, 256, [
        tabs, Dropdown("size", "Size", options=["S", "M", "L"]), pane,
        RadioGroup("r", "R", options=["a", "b", "c"]),
        ListView("list", "L", items=[f"item {i}" for i in range(9)], visible=3),
        Button("ok", "OK"), Button("no", "No"),
    ])  # fmt: skip
    if dialog:
        win.dialog = Dialog("dlg", "Hi", message="m", buttons=[Button("dok", "OK")])
    layout_window(win, Geometry())
    env = GUIEnv(width=128, height=256, max_steps=max_steps)
    task = Task("custom", "press OK with M", win, {"size": "M"}, ("press", "ok"))
    env.reset(options={"task": task})
    return env


def at(env: GUIEnv, wid: str, attr: str = "box", index: int | None = None) -> tuple[int, int]:
    box = getattr(env.window.find(wid), attr)
    return box_center(box if index is None else box[index])


def test_checkbox_radio_tabs_react_to_clicks():
    env = custom_env()
    env.step(Click(*at(env, "c0", "mark_box")))
    assert env.window.find("c0").checked
    env.step(Click(*at(env, "c0")))  # the label toggles too
    assert not env.window.find("c0").checked
    env.step(Click(*at(env, "r", "option_boxes", 2)))
    assert env.window.find("r").value() == "c"
    env.step(Click(*at(env, "tabs", "tab_boxes", 1)))
    assert env.window.find("tabs").active == 1
    assert (
        env.window.hit(*at(env, "name")) is None
        or env.window.hit(*at(env, "name")).widget.wid != "name"
    )
    env.step(LeftDouble(*at(env, "hidden")))  # two clicks: ticked and unticked
    assert not env.window.find("hidden").checked


def test_text_field_focus_typing_and_keys():
    env = custom_env()
    env.step(Type("zz"))  # nothing focused: no effect
    assert env.window.find("name").text == "ab"
    env.step(Click(*at(env, "name")))
    assert env.window.focus == "name"
    env.step(Type("cd"))
    env.step(Hotkey(("backspace",)))
    assert env.window.find("name").text == "abc"
    env.step(Hotkey(("ctrl", "a")))
    env.step(Type("new"))
    assert env.window.find("name").text == "new"
    env.step(Hotkey(("ctrl", "a")))
    env.step(Hotkey(("backspace",)))
    assert env.window.find("name").text == ""
    env.step(Hotkey(("tab",)))
    assert env.window.focus == "mail"
    env.step(Click(*at(env, "c0")))
    assert env.window.focus is None
    env.step(Click(*at(env, "name")))
    _, reward, terminated, _, info = env.step(Hotkey(("enter",)))
    assert terminated and reward == 0 and info["events"] == [("submit", "name")]


def test_dropdown_open_select_and_close():
    env = custom_env()
    drop = env.window.find("size")
    env.step(Click(*at(env, "size")))
    assert drop.open and len(drop.option_boxes) == 3
    env.step(Click(*at(env, "size", "option_boxes", 2)))
    assert not drop.open and drop.value() == "L"
    env.step(Click(*at(env, "size")))
    env.step(Click(*at(env, "r", "option_boxes", 2)))  # a click outside only closes it
    assert not drop.open and env.window.find("r").selected == 0
    env.step(Click(*at(env, "size")))
    env.step(Hotkey(("esc",)))
    assert not drop.open
    env.step(Click(*at(env, "size")))
    env.step(RightSingle(1, 1))
    assert not drop.open and drop.value() == "L"


def test_list_scroll_select_open():
    env = custom_env()
    lv = env.window.find("list")
    env.step(Scroll(*at(env, "list"), "down"))
    assert lv.offset == SCROLL_ROWS
    env.step(Scroll(*at(env, "list"), "left"))  # sideways: nothing
    assert lv.offset == SCROLL_ROWS
    for _ in range(5):
        env.step(Scroll(*at(env, "list"), "down"))
    assert lv.offset == lv.max_offset() == 6
    env.step(Scroll(*at(env, "list"), "up"))
    assert lv.offset == 6 - SCROLL_ROWS
    thumb = lv.thumb_box()
    env.step(Drag(*box_center(thumb), box_center(thumb)[0], lv.scrollbar_box[1]))
    assert lv.offset == 0
    env.step(Click(lv.scrollbar_box[0] + 1, lv.scrollbar_box[3] - 1))  # track below the thumb
    assert lv.offset == 3
    env.step(Click(*box_center(lv.row_box(4))))
    assert lv.selected == 4 and lv.opened is None
    _, _, terminated, _, info = env.step(LeftDouble(*box_center(lv.row_box(5))))
    assert terminated and info["events"] == [("open", "item 5")] and lv.opened == "item 5"


def test_enter_opens_the_selected_row():
    env = custom_env()
    env.step(Click(*box_center(env.window.find("list").row_box(1))))
    _, _, terminated, _, info = env.step(Hotkey(("enter",)))
    assert terminated and info["events"] == [("open", "item 1")]


def test_scroll_pane_shows_and_hits_lower_children():
    env = custom_env()
    pane = env.window.find("pane")
    c3 = env.window.find("c3")
    env.step(Scroll(*at(env, "pane"), "down"))
    assert [c.wid for c in pane.shown()] == ["c2", "c3"]
    env.step(Click(*at(env, "c3", "mark_box")))
    assert c3.checked


def test_dialog_blocks_until_closed():
    env = custom_env(dialog=True)
    env.step(Click(*at(env, "c0")))
    assert not env.window.find("c0").checked  # modal
    env.step(Type("x"))
    env.step(Click(*box_center(env.window.dialog.close_box)))
    assert env.window.dialog is None and env.window.events == [("dialog", "Hi")]
    env2 = custom_env(dialog=True)
    env2.step(Click(*box_center(env2.window.dialog.buttons[0].box)))
    assert env2.window.dialog is None
    env3 = custom_env(dialog=True)
    env3.step(Hotkey(("esc",)))
    assert env3.window.dialog is None


def test_reward_only_for_the_right_end_state():
    env = custom_env()
    _, reward, terminated, _, _ = env.step(Click(*at(env, "ok")))
    assert terminated and reward == 0.0  # size still S
    env = custom_env()
    env.step(Click(*at(env, "size")))
    env.step(Click(*at(env, "size", "option_boxes", 1)))
    _, reward, terminated, _, info = env.step(Click(*at(env, "no")))
    assert terminated and reward == 0.0  # wrong button
    env = custom_env()
    env.step(Click(*at(env, "size")))
    env.step(Click(*at(env, "size", "option_boxes", 1)))
    env.step(Click(*at(env, "c1")))  # a stray change
    _, reward, _, _, _ = env.step(Click(*at(env, "ok")))
    assert reward == 0.0
    env = custom_env()
    env.step(Click(*at(env, "size")))
    env.step(Click(*at(env, "size", "option_boxes", 1)))
    _, reward, terminated, _, info = env.step(Click(*at(env, "ok")))
    assert terminated and reward == 1.0 and info["success"]


def test_invalid_actions_change_nothing_and_count():
    env = custom_env(max_steps=3)
    before = env.observe()
    _, reward, terminated, truncated, info = env.step("click(1000,2)")
    assert info["invalid_action"] and "x < 128" in info["error"] and not terminated
    _, _, _, _, info = env.step("Thought: hmm\nAction: tap(1,2)")
    assert info["invalid_action"] and "action name" in info["error"]
    assert np.array_equal(before, env.observe())
    _, _, terminated, truncated, _ = env.step(Wait())
    assert truncated and not terminated and env.steps == 3


def test_text_and_objects_are_the_same_action():
    assert to_action("Thought: go\nAction: click(3,4)", (10, 10)) == Click(3, 4)
    assert to_action(" click(3,4)\n", (10, 10)) == Click(3, 4)
    with pytest.raises(ValueError, match="on the 10×10 screen"):
        to_action(Drag(1, 1, 10, 1), (10, 10))


def test_reset_is_deterministic_from_the_seed():
    a, b = GUIEnv(split="train"), GUIEnv(split="train")
    obs_a, info_a = a.reset(seed=7)
    obs_b, info_b = b.reset(seed=7)
    assert np.array_equal(obs_a, obs_b) and info_a == info_b
    assert a.render_text() == b.render_text()
    obs_c, info_c = a.reset(seed=8)
    assert info_c["instruction"] != info_a["instruction"] or not np.array_equal(obs_a, obs_c)
    obs, info = a.reset(seed=1, options={"template": "list_open"})
    assert info["template"] == "list_open" and obs.shape == (128, 128, 3) and obs.dtype == np.uint8


def test_render_text_and_modes():
    env = GUIEnv(render_mode="ansi")
    env.reset(seed=0, options={"task": sample_task(3, template="login_remember")})
    text = env.render()
    assert text.startswith("window 'Sign in' 128x128") and "checkbox remember" in text
    assert "textfield user 'Username' = ''" in text
    assert GUIEnv(render_mode="rgb_array").reset(seed=0)[0].shape == (128, 128, 3)


def test_task_screen_must_match_env():
    with pytest.raises(ValueError, match="task screen"):
        GUIEnv(width=96, height=96).reset(options={"task": sample_task(0)})
    with pytest.raises(RuntimeError, match="reset"):
        GUIEnv().step("wait()")


def test_gymnasium_env_checker_accepts_the_env():
    check_env(GUIEnv(max_steps=5), skip_render_check=True)
