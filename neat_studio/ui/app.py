"""The NEAT Studio web app (Gradio 6): `build_app(studio, auth=None)` and `launch(...)` (`python -m neat_studio serve`).

Tabs are modules of this package, each with `build(ctx) -> dict[str, component]` and NO business logic: they call
`ctx.studio` (neat_studio.studio.Studio). To add a tab, add its module to `TABS`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import gradio as gr

from . import annotate, compare, data, prompts, studio_tab, train
from .auth import UserDB, load_auth
from .common import Ctx, esc

log = logging.getLogger(__name__)

# (tab label, module, elem_id). Order = order of the tabs.
TABS = [
    ("Prompts", prompts, "tab-prompts"),
    ("Negative Prompt Studio", studio_tab, "tab-studio"),
    ("Annotate", annotate, "tab-annotate"),
    ("Data", data, "tab-data"),
    ("Train", train, "tab-train"),
    ("Compare", compare, "tab-compare"),
]

CSS_PATH = Path(__file__).with_name("studio.css")


class StudioBlocks(gr.Blocks):
    """gr.Blocks whose `launch()` defaults to the studio's auth, theme, CSS and safe server settings, so
    `build_app(...).launch(prevent_thread_lock=True, server_port=p)` in a test behaves like `serve`."""

    neat_auth: UserDB | None = None

    def launch(self, *args, **kwargs):
        if self.neat_auth is not None:
            kwargs.setdefault("auth", self.neat_auth.check)
            kwargs.setdefault("auth_message", "NEAT Studio: sign in with your studio account.")
        kwargs.setdefault("css_paths", [CSS_PATH])
        kwargs.setdefault("theme", gr.themes.Soft(primary_hue="indigo", neutral_hue="slate"))
        kwargs.setdefault("ssr_mode", False)
        kwargs.setdefault("footer_links", [])
        kwargs.setdefault("show_error", True)
        kwargs.setdefault("mcp_server", False)
        return super().launch(*args, **kwargs)


def build_app(studio, auth: UserDB | None = None) -> gr.Blocks:
    """The whole UI on top of one `Studio`. `auth`: a UserDB (login required) or None (single local user)."""
    ctx = Ctx(studio=studio, auth=auth)
    with StudioBlocks(title="NEAT Studio", analytics_enabled=False, fill_width=True) as demo:
        demo.neat_auth = auth
        with gr.Row(elem_id="neat-header", equal_height=True):
            gr.HTML("<div class='neat-brand'><b>NEAT Studio</b> <span>negative-prompt-driven alignment"
                    "</span></div>", js_on_load=None, elem_id="neat-brand")
            who = gr.HTML("", js_on_load=None, elem_id="neat-who")
        shows = []
        with gr.Tabs(elem_id="neat-tabs") as tabs:
            for label, mod, elem_id in TABS:
                module = mod.__name__.rsplit(".", 1)[-1]
                with gr.Tab(label, id=module, elem_id=elem_id) as tab:
                    comps = mod.build(ctx) or {}
                ctx.components.update({f"{module}.{k}": v for k, v in comps.items() if not k.startswith("_")})
                if "_on_show" in comps:
                    spec = comps["_on_show"]
                    fn, inputs, outputs = spec if len(spec) == 3 else (spec[0], None, spec[1])
                    tab.select(fn, inputs=inputs, outputs=outputs, show_progress="hidden")
                    shows.append((fn, inputs, outputs))
        ctx.components["tabs"] = tabs

        def whoami(request: gr.Request):
            user, role = ctx.user(request), ctx.role(request)
            logout = " · <a href='logout'>sign out</a>" if ctx.auth is not None else ""
            admin = role == "admin"
            return [f"<div class='neat-who'>{esc(user)} <span class='neat-role'>{esc(role)}</span>{logout}</div>"] + \
                [gr.update(visible=admin) for _ in ctx.admin_only]

        demo.load(whoami, inputs=None, outputs=[who, *ctx.admin_only], show_progress="hidden")

        def backup(out: str, parquet: bool, request: gr.Request) -> str:
            """API only (`python -m neat_studio backup` while the app owns the database): admins only."""
            if ctx.role(request) != "admin":
                raise gr.Error("Only admins can make backups.")
            out_path = Path(out).resolve()
            pq = out_path.with_name(out_path.stem + "-parquet") if parquet else None
            try:
                # JSON text: gradio would take a dict with a "path" key for a file to serve
                return json.dumps(studio.backup(out_path, parquet_dir=pq, actor=ctx.user(request)))
            except ValueError as e:
                raise gr.Error(str(e)) from e

        gr.api(backup, api_name="backup")
        for fn, inputs, outputs in shows:
            demo.load(fn, inputs=inputs, outputs=outputs, show_progress="hidden")
    demo.neat_ctx = ctx
    return demo


def launch(workspace=None, db=None, model: str = "default", host: str = "127.0.0.1", port: int = 7860,
           auth_file=None, share: bool = False, block: bool = True, dtype: str = "auto"):
    """Start the studio (what `python -m neat_studio serve` runs). `model` "default" (serve's default) starts with
    the generator chosen last with "Use as generator" in this workspace, when there is one; any other model
    is used as given."""
    from ..config import Workspace
    from ..studio import Studio

    auth = load_auth(auth_file)
    studio = Studio(Workspace.from_env(workspace), db_path=db,
                    model_spec=None if model in (None, "", "default") else model, gen_dtype=dtype)
    try:
        studio.seed_if_empty(actor="system")
    except Exception as e:  # noqa: BLE001 - seeding is a convenience; the app still starts empty
        log.warning("seeding the workspace failed: %s", e)
    restored = " (chosen with 'Use as generator')" if studio.generator_restored else ""
    print(f"NEAT Studio: loading the generation model {studio.model_spec!r}{restored} ...", flush=True)
    try:
        lm = studio.policy()  # the studio answers with its model loaded (first start converts the GGUF once)
    except Exception as e:  # noqa: BLE001 - a remembered generator that no longer loads must not block the app
        if not studio.generator_restored:
            raise
        log.warning("the remembered generator %s does not load (%s); starting with the default model",
                    studio.model_spec, e)
        studio.model_spec, studio.generator_restored = "default", False
        lm = studio.policy()
    print(f"NEAT Studio: model {lm.model_id} loaded ({str(studio.gen_dtype).removeprefix('torch.')})", flush=True)
    demo = build_app(studio, auth=auth)
    studio.start_background_embedding()  # new prompts/responses get vectors without blocking anyone
    print(f"NEAT Studio: workspace {studio.workspace.root}, model {studio.model_spec}, "
          f"{'login required (' + str(len(auth.users)) + ' users)' if auth else 'single local user (no login)'}")
    # Saves and page loads run concurrently (the store serialises writes); model work is limited per handler.
    demo.queue(default_concurrency_limit=16)
    try:
        return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block)
    finally:
        if block:
            studio.close()
