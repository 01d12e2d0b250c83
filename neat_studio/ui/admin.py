"""Admin tab: accounts (add with a one-time password, change role, disable / enable, reset the password). Only with
login on (`serve --auth`): without accounts there is nothing to administer. Every action is checked on the server
(ctx.require_admin) and audited under the admin's name."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from ..studio.core import ACCOUNT_ACTIONS, account_action
from .common import Ctx, error_box, esc, ok_box

COLUMNS = ["user", "role", "status", "created", "by"]


def users_df(users: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[u["username"], u["role"],
                          "disabled" if u["disabled"] else ("must change password" if u["must_change"] else "active"),
                          str(u["created_at"])[:16].replace("T", " "), u["created_by"]] for u in users],
                        columns=COLUMNS)


def once_box(username: str, password: str) -> str:
    return (f"<div class='neat-ok' role='status'>One-time password for {esc(username)}: <code class='neat-otp'>"
            f"{esc(password)}</code> (shown once; hand it over privately). They choose their own at first sign-in."
            "</div>")


class AdminTab:
    """The tab's handlers on the accounts `ctx.auth`; the rules of each action are studio.core.account_action's."""

    def __init__(self, ctx: Ctx):
        self.ctx, self.auth = ctx, ctx.auth

    def load(self, request: gr.Request):
        if not self.ctx.is_admin(request):
            return users_df([])
        return users_df(self.auth.list_users())

    def act(self, kind: str, username, role, request: gr.Request):
        me = self.ctx.require_admin(request, "manage accounts")
        try:
            r = account_action(self.auth, kind, username, role, actor=me)
        except ValueError as e:
            return error_box(f"Nothing changed: {e}."), gr.update()
        out = once_box(r["username"], r["password"]) if "password" in r else ok_box(r["message"])
        return out, users_df(self.auth.list_users())

    # one handler per button (named as ACCOUNT_ACTIONS): gradio finds the gr.Request parameter in a method's
    # hints, not in a partial's
    def add(self, username, role, request: gr.Request):
        return self.act("add", username, role, request)

    def reset(self, username, role, request: gr.Request):
        return self.act("reset", username, role, request)

    def role(self, username, role, request: gr.Request):
        return self.act("role", username, role, request)

    def disable(self, username, role, request: gr.Request):
        return self.act("disable", username, role, request)

    def enable(self, username, role, request: gr.Request):
        return self.act("enable", username, role, request)

    @staticmethod
    def pick(evt: gr.SelectData, df):
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            return str(df.iloc[row, 0]), str(df.iloc[row, 1])
        except Exception:  # noqa: BLE001
            return gr.update(), gr.update()


def build(ctx: Ctx) -> dict:
    if ctx.auth is None or not hasattr(ctx.auth, "add_user"):
        gr.Markdown("Accounts exist when the studio runs with login (`python -m neat_studio serve --auth`). "
                    "Without login each browser annotates under the name it chose.", elem_classes=["neat-help"])
        return {}
    tab = AdminTab(ctx)
    with gr.Column() as col:
        table = gr.Dataframe(headers=COLUMNS, datatype="str", interactive=False, max_height=320,
                             elem_id="admin-users")
        with gr.Row():
            name = gr.Textbox(label="User name", elem_id="admin-name", scale=3)
            role = gr.Radio(["annotator", "admin"], value="annotator", label="Role", elem_id="admin-role", scale=2)
        with gr.Row():
            buttons = {"add": gr.Button("Add user", variant="primary", size="sm", elem_id="admin-add"),
                       "role": gr.Button("Set role", size="sm", elem_id="admin-set-role"),
                       "disable": gr.Button("Disable", size="sm", elem_id="admin-disable"),
                       "enable": gr.Button("Enable", size="sm", elem_id="admin-enable"),
                       "reset": gr.Button("Reset password", size="sm", elem_id="admin-reset")}
        msg = gr.HTML("", js_on_load=None, elem_id="admin-msg")
    ctx.admin_only.append(col)
    for kind in ACCOUNT_ACTIONS:
        buttons[kind].click(getattr(tab, kind), [name, role], [msg, table], api_name=f"admin_{kind}")
    table.select(tab.pick, table, [name, role])
    return {"users": table, "name": name, "role": role, "add": buttons["add"], "reset": buttons["reset"],
            "disable": buttons["disable"], "enable": buttons["enable"], "set_role": buttons["role"], "msg": msg,
            "_on_show": (tab.load, [table])}
