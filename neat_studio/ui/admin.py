"""Admin tab: accounts (add with a one-time password, change role, disable / enable, reset the password). Only with
login on (`serve --auth`): without accounts there is nothing to administer. Every action is checked on the server
(ctx.require_admin) and audited under the admin's name."""
from __future__ import annotations

import gradio as gr
import pandas as pd

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


def build(ctx: Ctx) -> dict:
    auth = ctx.auth
    if auth is None or not hasattr(auth, "add_user"):
        gr.Markdown("Accounts exist when the studio runs with login (`python -m neat_studio serve --auth`). "
                    "Without login each browser annotates under the name it chose.", elem_classes=["neat-help"])
        return {}
    with gr.Column() as col:
        table = gr.Dataframe(headers=COLUMNS, datatype="str", interactive=False, max_height=320,
                             elem_id="admin-users")
        with gr.Row():
            name = gr.Textbox(label="User name", elem_id="admin-name", scale=3)
            role = gr.Radio(["annotator", "admin"], value="annotator", label="Role", elem_id="admin-role", scale=2)
        with gr.Row():
            add = gr.Button("Add user", variant="primary", size="sm", elem_id="admin-add")
            set_role = gr.Button("Set role", size="sm", elem_id="admin-set-role")
            disable = gr.Button("Disable", size="sm", elem_id="admin-disable")
            enable = gr.Button("Enable", size="sm", elem_id="admin-enable")
            reset = gr.Button("Reset password", size="sm", elem_id="admin-reset")
        msg = gr.HTML("", js_on_load=None, elem_id="admin-msg")
    ctx.admin_only.append(col)

    def load(request: gr.Request):
        if not ctx.is_admin(request):
            return users_df([])
        return users_df(auth.list_users())

    def act(kind):
        def run(username, r, request: gr.Request):
            me = ctx.require_admin(request, "manage accounts")
            username = (username or "").strip()
            try:
                if kind == "add":
                    out = once_box(username, auth.add_user(username, r, actor=me))
                elif kind == "reset":
                    out = once_box(username, auth.reset_password(username, actor=me))
                elif kind == "role":
                    auth.set_role(username, r, actor=me)
                    out = ok_box(f"{username} is now {r}.")
                else:
                    if kind == "disable" and username == me:
                        raise ValueError("you cannot disable your own account")
                    auth.set_disabled(username, kind == "disable", actor=me)
                    state = "disabled (signed out everywhere)" if kind == "disable" else "enabled"
                    out = ok_box(f"{username} is {state}.")
            except ValueError as e:
                return error_box(f"Nothing changed: {e}."), gr.update()
            return out, users_df(auth.list_users())
        return run

    for btn, kind in ((add, "add"), (reset, "reset"), (set_role, "role"), (disable, "disable"), (enable, "enable")):
        btn.click(act(kind), [name, role], [msg, table], api_name=f"admin_{kind}")

    def pick(evt: gr.SelectData, df):
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            return str(df.iloc[row, 0]), str(df.iloc[row, 1])
        except Exception:  # noqa: BLE001
            return gr.update(), gr.update()

    table.select(pick, table, [name, role])
    return {"users": table, "name": name, "role": role, "add": add, "reset": reset, "disable": disable,
            "enable": enable, "set_role": set_role, "msg": msg, "_on_show": (load, [table])}
