"""Audits vit_jax's timm checkpoint reader against every ViT-like architecture timm registers: none may load wrong.

    python scripts/audit_timm_checkpoints.py --fresh --out timm_audit.json   # ~4-6 min on 2 cores

Each architecture (and each constructor option in VARIANTS, on a plain ViT or Eva) is built tiny (embed_dim 64,
2 heads, depth 2, 2-4 patches a side, 5 classes), every parameter perturbed with N(0, 0.2) noise, saved with
`timm.models.save_for_hf`, read with `vit_jax.checkpoint.trained_model.load_trained_model`, and run on the same
random input as timm (eval mode), then again at a second resolution unless `--no-res2`. Classes: MATCH, MISMATCH
(relative difference > 1e-4), REFUSED-CLEARLY (a one-line error from vit_jax.checkpoint), ERROR-UNCLEAR (anything
else), NOT-BUILT (timm cannot build it small). Exit status 1 if any is MISMATCH or ERROR-UNCLEAR.

Result with timm 1.0.31 (2026-12-06, docs/hub_checkpoints.md): 436 cases (370 registered names, 66 option
variants): 316 MATCH (the 14 NaFlexVit architectures, 9 ResNetV2 hybrids and Sapiens2's grouped-query attention
among them), 102 REFUSED-CLEARLY, 18 NOT-BUILT, no MISMATCH and no ERROR-UNCLEAR.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

from vit_jax.timm_compat import import_timm

timm = import_timm()
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from timm.models import _registry  # noqa: E402

from vit_jax.checkpoint.trained_model import load_trained_model  # noqa: E402

TIMEOUT = 120
TOL = 1e-4  # every match so far is within 7e-6 (2026-12-06; the hybrids on 3-pixel images)
MODULES = ["vision_transformer", "eva", "deit", "naflexvit", "beit", "vision_transformer_relpos",
           "vision_transformer_hybrid", "vision_transformer_sam", "cait", "convit", "gemma4_vit", "qwen3_vit",
           "deepseek_vit", "vitamin", "xcit", "tnt"]
SMALL = dict(embed_dim=64, num_heads=2, depth=2, num_classes=5)
MAX_PARAMS = 30e6
# Per-name overrides where SMALL cannot build (packed SwiGLU needs an even hidden width, etc.).
PER_NAME = {
    "vit_giant_patch14_dinov2": dict(embed_dim=96), "vit_giant_patch14_reg4_dinov2": dict(embed_dim=96),
    "vit_giant_patch14_reg1_tipsv2": dict(embed_dim=96),
    "vit_tiny_r_s16_p8_224": dict(img_size=64), "vit_tiny_r_s16_p8_384": dict(img_size=64),
    "deepseek_vit_412m": dict(img_size=56), "deepseek_vit_412m_align": dict(img_size=56),
    **{f"qwen3_vit_{s}_{k}": dict(img_size=64) for s in ("88m", "306m", "416m") for k in ("enc", "merge")},
    # Sapiens2's per-block key/value heads, as its sizes have them: all the heads (base), some blocks grouped (others)
    "vit_base_patch16_sapiens2": dict(num_kv_heads=[2, 2]),
    **{f"vit_{s}_patch16_sapiens2": dict(num_kv_heads=[2, 1]) for s in ("large", "huge", "giant", "5b")},
}

# Constructor options that no registered name uses (or uses only in big models): each on a plain base ViT / Eva.
VARIANTS = {
    "V:vit+proj_bias=False": ("vit_base_patch16_224", dict(proj_bias=False)),
    "V:vit+final_norm=False": ("vit_base_patch16_224", dict(final_norm=False)),
    "V:vit+final_norm=False,gap": ("vit_base_patch16_224", dict(final_norm=False, global_pool="avg",
                                                                 class_token=False)),
    "V:vit+gap,fc_norm=False": ("vit_base_patch16_224", dict(global_pool="avg", class_token=False, fc_norm=False)),
    "V:vit+gap,cls,fc_norm=True": ("vit_base_patch16_224", dict(global_pool="avg", fc_norm=True)),
    "V:vit+pool_include_prefix": ("vit_base_patch16_224", dict(global_pool="avg", pool_include_prefix=True)),
    "V:vit+global_pool=max": ("vit_base_patch16_224", dict(global_pool="max")),
    "V:vit+global_pool=avgmax": ("vit_base_patch16_224", dict(global_pool="avgmax")),
    "V:vit+global_pool=map,cls": ("vit_base_patch16_224", dict(global_pool="map")),
    "V:vit+global_pool=map,nocls": ("vit_base_patch16_224", dict(global_pool="map", class_token=False)),
    "V:vit+global_pool=empty,head": ("vit_base_patch16_224", dict(global_pool="")),
    "V:vit+pos_embed=none": ("vit_base_patch16_224", dict(pos_embed="none")),
    "V:vit+no_embed_class": ("vit_base_patch16_224", dict(no_embed_class=True)),
    "V:vit+no_embed_class,reg2": ("vit_base_patch16_224", dict(no_embed_class=True, reg_tokens=2)),
    "V:vit+reg2,nocls,gap": ("vit_base_patch16_224", dict(reg_tokens=2, class_token=False, global_pool="avg")),
    "V:vit+class_token=False,token": ("vit_base_patch16_224", dict(class_token=False, global_pool="avg",
                                                                    fc_norm=False)),
    "V:vit+act=gelu_tanh": ("vit_base_patch16_224", dict(act_layer="gelu_tanh")),
    "V:vit+act=silu": ("vit_base_patch16_224", dict(act_layer="silu")),
    "V:vit+act=relu": ("vit_base_patch16_224", dict(act_layer="relu")),
    "V:vit+act=quick_gelu": ("vit_base_patch16_224", dict(act_layer="quick_gelu")),
    "V:vit+norm=rmsnorm": ("vit_base_patch16_224", dict(norm_layer="rmsnorm")),
    "V:vit+norm=layernorm(eps1e-5)": ("vit_base_patch16_224", dict(norm_layer="layernorm")),
    "V:vit+init_values": ("vit_base_patch16_224", dict(init_values=1e-5)),
    "V:vit+pre_norm": ("vit_base_patch16_224", dict(pre_norm=True)),
    "V:vit+pre_norm,patch_bias": ("vit_base_patch16_224", dict(pre_norm=True)),
    "V:vit+embed_norm=rmsnorm": ("vit_base_patch16_224", dict(embed_norm_layer="rmsnorm")),
    "V:vit+scale_attn_norm": ("vit_base_patch16_224", dict(scale_attn_norm=True)),
    "V:vit+scale_mlp_norm": ("vit_base_patch16_224", dict(scale_mlp_norm=True)),
    "V:vit+mlp_ratio=2.5": ("vit_base_patch16_224", dict(mlp_ratio=2.5)),
    "V:vit+rect_img": ("vit_base_patch16_224", dict(img_size=(32, 48))),
    "V:vit+rect_patch": ("vit_base_patch16_224", dict(patch_size=(8, 16), img_size=(32, 32))),
    "V:vit+in_chans=1": ("vit_base_patch16_224", dict(in_chans=1)),
    "V:vit+dynamic_img_size": ("vit_base_patch16_224", dict(dynamic_img_size=True)),
    "V:vit+dynamic_img_pad": ("vit_base_patch16_224", dict(dynamic_img_size=True, dynamic_img_pad=True)),
    "V:vit+num_classes=0": ("vit_base_patch16_224", dict(num_classes=0)),
    "V:vit+heads4": ("vit_base_patch16_224", dict(num_heads=4)),
    "V:siglip+attn_pool_heads?": ("vit_base_patch16_siglip_224", dict(global_pool="map")),
    "V:clip+gap": ("vit_base_patch16_clip_224", dict(global_pool="avg")),
    "V:dinov2+gap": ("vit_small_patch14_dinov2", dict(global_pool="avg")),
    "V:eva+use_pre_transformer_norm": ("vit_small_patch16_rope_224", dict(use_pre_transformer_norm=True)),
    "V:eva+use_post_transformer_norm=False": ("vit_small_patch16_rope_224", dict(use_post_transformer_norm=False)),
    "V:eva+use_fc_norm": ("vit_small_patch16_rope_224", dict(use_fc_norm=True, global_pool="avg")),
    "V:eva+qkv_fused=False": ("vit_small_patch16_rope_224", dict(qkv_fused=False)),
    "V:eva+attn_type=rope,qkv_bias=False": ("vit_small_patch16_rope_224", dict(qkv_bias=False)),
    "V:eva+global_pool=token": ("vit_small_patch16_rope_224", dict(global_pool="token")),
    "V:eva+rope_temperature=10000": ("vit_small_patch16_rope_224", dict(rope_temperature=10000.0)),
    "V:eva+init_values=None": ("vit_small_patch16_rope_224", dict(init_values=None)),
    "V:eva+num_reg_tokens": ("vit_small_patch16_rope_224", dict(num_reg_tokens=2)),
    "V:eva+class_token=False": ("vit_small_patch16_rope_224", dict(class_token=False)),
    "V:eva+rope_shift_coords": ("vit_small_patch16_rope_224", dict(rope_shift_coords=1.0)),
    "V:dinov3+rope_rescale_coords": ("vit_small_patch16_dinov3", dict(rope_rescale_coords=2.0)),
    "V:dinov3+rope_temperature=1000": ("vit_small_patch16_dinov3", dict(rope_temperature=1000.0)),
    "V:dinov3+global_pool=avg,nofcnorm": ("vit_small_patch16_dinov3", dict(global_pool="avg", use_fc_norm=False)),
    "V:dinov3+use_fc_norm": ("vit_small_patch16_dinov3", dict(global_pool="avg", use_fc_norm=True)),
    "V:vit+global_pool=prr": ("vit_base_patch16_224", dict(global_pool="prr")),
    "V:vit+map,pool_include_prefix,reg": ("vit_base_patch16_224", dict(global_pool="map", class_token=False,
                                                                       reg_tokens=1, pool_include_prefix=True)),
    "V:vit+block_fn=ResPostBlock(rpn)": ("vit_base_patch16_rpn_224", dict(class_token=True, global_pool="token")),
    "V:eva+class_token=False,avg": ("vit_small_patch16_rope_224", dict(class_token=False, global_pool="avg")),
    "V:eva+attn_pool_num_heads=4(map,nocls)": ("vit_small_patch16_rope_224", dict(
        class_token=False, global_pool="map", attn_pool_num_heads=4)),
    "V:eva+map,nocls": ("vit_small_patch16_rope_224", dict(class_token=False, global_pool="map")),
    "V:pe_core(no cls, heads=8)": ("vit_pe_core_base_patch16_224", dict(class_token=False, num_heads=8)),
    "V:pe_core(no cls, heads=8, no attn_pool)": ("vit_pe_core_base_patch16_224", dict(
        class_token=False, num_heads=8, global_pool="avg")),
    "V:pe_spatial+final norm": ("vit_pe_spatial_base_patch16_512", dict(use_post_transformer_norm=True)),
    "V:radio_v3+final_norm=True": ("vit_base_patch16_radio_v3", dict(final_norm=True)),
    "V:lingbot+use_abs_pos_emb": ("vit_base_patch16_lingbot", dict(use_abs_pos_emb=True)),
    "V:rope_mixed+rope_temperature=100": ("vit_small_patch16_rope_mixed_224", dict(rope_temperature=100.0)),
}


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout(f"timed out after {TIMEOUT}s")


def candidates() -> list[str]:
    names = [n for n in timm.list_models() if _registry._model_to_module.get(n) in MODULES]
    pats = ["vit_*", "deit*", "eva*", "flexivit*", "*rope*", "*reg*", "*naflex*", "*siglip*", "*clip*", "*dino*",
            "*mae*", "*gap*"]
    extra = set()
    for p in pats:
        extra.update(timm.list_models(p))
    for n in sorted(extra):
        if n not in names and _registry._model_to_module.get(n) not in ("resnet", "efficientnet", "regnet", "byobnet", "nfnet", "byoanet"):
            names.append(n)
    return sorted(dict.fromkeys(names))


def patch_of(name: str) -> int:
    m = re.search(r"patch(\d+)", name)
    return int(m.group(1)) if m else 16


def model_patch(model) -> tuple[int, int] | None:
    pe = getattr(model, "patch_embed", None) or getattr(model, "embeds", None)
    for obj in (pe, getattr(pe, "patch_embed", None) if pe is not None else None):
        if obj is not None and hasattr(obj, "patch_size"):
            ps = obj.patch_size
            return (ps, ps) if isinstance(ps, int) else tuple(ps)
    return None


def create(name: str, kwargs: dict):
    """Build small: drop keyword arguments the constructor refuses; refuse to build something big."""
    kwargs = dict(kwargs)
    dropped = []
    for _ in range(8):
        try:
            with torch.device("meta"):
                m = timm.create_model(name, pretrained=False, **kwargs)
            n = sum(p.numel() for p in m.parameters())
            if n > MAX_PARAMS:
                raise RuntimeError(f"too big when built with {kwargs} ({n / 1e6:.0f}M params; dropped {dropped})")
        except TypeError as e:
            bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if bad and bad.group(1) in kwargs:
                dropped.append(bad.group(1))
                kwargs.pop(bad.group(1))
                continue
            raise
        except (NotImplementedError, RuntimeError) as e:
            if "too big" in str(e):
                raise
            # meta build not supported: build for real below
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, **kwargs), kwargs, dropped
    raise RuntimeError(f"could not build {name}")


def build(name: str, extra: dict):
    p = patch_of(name)
    kwargs = {**SMALL, "img_size": 3 * p, **PER_NAME.get(name, {}), **extra}
    extra = {**PER_NAME.get(name, {}), **extra}
    if "img_size" in extra and "patch_size" not in extra:
        pass
    model, used, dropped = create(name, kwargs)
    ps = model_patch(model)
    if ps is not None and "img_size" not in extra and ps[0] != p:  # the name lied about the patch: rebuild
        kwargs["img_size"] = 3 * ps[0] if ps[0] == ps[1] else (3 * ps[0], 3 * ps[1])
        model, used, dropped = create(name, kwargs)
    torch.manual_seed(0)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.2 * torch.randn_like(prm))
    return model.eval(), used, dropped


def torch_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)))
    return out.numpy()


def input_size(model, used) -> tuple[int, int, int]:
    pe = getattr(model, "patch_embed", None)
    size = used.get("img_size")
    if pe is not None and getattr(pe, "img_size", None) is not None:
        size = pe.img_size
    if isinstance(size, int):
        size = (size, size)
    chans = used.get("in_chans", 3)
    return int(size[0]), int(size[1]), chans


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def second_resolution(name, used, model, directory):
    """timm with dynamic_img_size=True (NaFlexVit: always) at a non-square bigger grid vs vit_jax with the table
    resized once by the checkpoint's own rule (the test's plan_adaptation path, as fine-tuning resizes it)."""
    from vit_jax.checkpoint.adapt import fill_from_init, plan_adaptation
    from vit_jax.checkpoint.pretrained import load_pretrained, timm_architecture
    from vit_jax.models.posemb import antialiased
    from vit_jax.models.vit import VisionTransformer, pixel_patch_size, token_grid

    dyn_kwargs = used if type(model).__name__ == "NaFlexVit" else {**used, "dynamic_img_size": True}
    torch.manual_seed(0)
    dynamic = timm.create_model(name, pretrained=False, **dyn_kwargs).eval()
    dynamic.load_state_dict(model.state_dict(), strict=True)
    arch = timm_architecture(directory)
    pretrained = load_pretrained(directory)
    target = VisionTransformer(**{**arch.options, "posemb_grid": None})
    ph, pw = pixel_patch_size(target)  # a hybrid's patch in image pixels
    new_size = (arch.image_size[0] + 2 * ph, arch.image_size[1] + pw)
    shapes = jax.eval_shape(lambda: target.init(jax.random.key(0), jnp.zeros((1, *new_size, arch.channels)),
                                                train=False))
    method = arch.options["posemb_resize"]
    plan = plan_adaptation(pretrained.params, shapes["params"], old_grid=pretrained.grid,
                           new_grid=token_grid(target, new_size), posemb_method=method,
                           posemb_antialias=antialiased(method, arch.options.get("posemb_antialias", True)),
                           posemb_aspect_preserving=arch.options.get("posemb_aspect_preserving", False),
                           posemb_offset=arch.options.get("posemb_resize_offset", 0.0))
    params = fill_from_init(plan, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"]))
    x = np.random.default_rng(1).standard_normal((2, *new_size, arch.channels)).astype(np.float32)
    ours = np.asarray(target.apply({"params": params}, x, train=False))
    return rel(ours, torch_logits(dynamic, x)), list(new_size)


# Every tensor name vit_jax.checkpoint.timm_layout.params_from_timm reads (the rest it silently ignores).
READ = re.compile(r"^(cls_token|reg_token|pos_embed|patch_embed\.proj\.(weight|bias)|patch_embed\.norm\.(weight|bias)|"
                  r"norm_pre\.(weight|bias)|norm\.(weight|bias)|fc_norm\.(weight|bias)|head\.(weight|bias)|rope\.freqs|"
                  r"attn_pool\.(latent|q\.(weight|bias)|kv\.(weight|bias)|proj\.(weight|bias)|norm\.(weight|bias)|"
                  r"mlp\.fc[12]\.(weight|bias))|"
                  r"blocks\.\d+\.(norm[12]\.(weight|bias)|attn\.(qkv\.(weight|bias)|q_bias|v_bias|[qkv]_proj\.(weight|bias)|"
                  r"proj\.(weight|bias))|mlp\.fc[12]\.(weight|bias)|ls[12]\.gamma|gamma_[12]))$")


def unread_tensors(model) -> list[str]:
    keys = [k for k in model.state_dict() if not READ.match(k)]
    return sorted({re.sub(r"blocks\.\d+\.", "blocks.N.", k) for k in keys})


def classify_exception(e: BaseException) -> dict:
    tb = traceback.extract_tb(e.__traceback__)
    where = f"{os.path.relpath(tb[-1].filename, '/') if tb else '?'}:{tb[-1].lineno if tb else '?'}"
    msg = str(e)
    in_loader = bool(tb) and "vit_jax/checkpoint" in tb[-1].filename
    clear = (isinstance(e, (ValueError, FileNotFoundError)) and in_loader and "\n" not in msg and len(msg) < 600)
    tail = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-4:])
    return dict(status="REFUSED-CLEARLY" if clear else "ERROR-UNCLEAR", error_type=type(e).__name__,
                message=msg[:1500], raised_at=where, traceback_tail=tail[-2500:])


def run_one(key: str, name: str, extra: dict, do_res2: bool) -> dict:
    rec: dict = dict(key=key, arch=name, module=_registry._model_to_module.get(name), extra=extra)
    t0 = time.time()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT)
    tmp = tempfile.mkdtemp(prefix="timm_audit_")
    try:
        try:
            model, used, dropped = build(name, extra)
        except Timeout:
            raise
        except Exception as e:  # noqa: BLE001
            rec.update(status="NOT-BUILT", error_type=type(e).__name__, message=str(e)[:600])
            return rec
        rec["unread_tensors"] = unread_tensors(model)
        rec.update(kwargs={k: (list(v) if isinstance(v, tuple) else v) for k, v in used.items()}, dropped=dropped,
                   model_class=type(model).__name__, n_params=int(sum(p.numel() for p in model.parameters())))
        h, w, c = input_size(model, used)
        x = np.random.default_rng(0).standard_normal((2, h, w, c)).astype(np.float32)
        try:
            ref = torch_logits(model, x)
        except Exception as e:  # noqa: BLE001
            rec.update(status="NOT-BUILT", error_type=type(e).__name__, message=f"timm forward failed: {e}"[:600])
            return rec
        try:
            timm.models.save_for_hf(model, tmp, safe_serialization=True)
        except Exception as e:  # noqa: BLE001
            rec.update(status="NOT-BUILT", error_type=type(e).__name__, message=f"save_for_hf failed: {e}"[:600])
            return rec
        try:
            trained = load_trained_model(tmp)
            rec["vit_jax_options"] = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                                      for k, v in dict(trained.model.__dict__).items()
                                      if not k.startswith("_") and k not in ("parent", "name", "scope")}
            rec["vit_jax_image_size"] = list(trained.image_size)
            if tuple(trained.image_size) != (h, w):
                rec["note"] = f"vit_jax image_size {trained.image_size} != timm's {(h, w)}"
            ours = np.asarray(trained.model.apply({"params": trained.params}, x, train=False))
        except Timeout:
            raise
        except Exception as e:  # noqa: BLE001
            rec.update(classify_exception(e))
            return rec
        if ours.shape != ref.shape:
            rec.update(status="MISMATCH", diff=None, message=f"shape {ours.shape} vs timm {ref.shape}")
            return rec
        d = rel(ours, ref)
        if d > 2e-5:  # float32 agreement is ~1e-6 here: which vit_jax option would close the gap?
            probes = {}
            for opt, values in (("gelu_approximate", (True,)), ("quick_gelu", (True, False)),
                                ("layer_norm_epsilon", (1e-5, 1e-6))):
                for val in values:
                    if getattr(trained.model, opt, None) == val:
                        continue
                    try:
                        o = np.asarray(trained.model.clone(**{opt: val}).apply({"params": trained.params}, x,
                                                                                train=False))
                        probes[f"{opt}={val}"] = rel(o, ref)
                    except Exception as e:  # noqa: BLE001
                        probes[f"{opt}={val}"] = f"{type(e).__name__}"
            rec["probes"] = probes
        rec.update(status="MATCH" if d <= TOL else "MISMATCH", diff=d)
        if rec["status"] == "MATCH" and d > 2e-5:
            rec["suspect"] = True  # above float32 agreement though under TOL
        if do_res2 and rec["status"] == "MATCH":
            try:
                d2, size2 = second_resolution(name, used, model, tmp)
                rec.update(diff_res2=d2, res2=size2)
                if d2 > TOL:
                    rec["status_res2"] = "MISMATCH"
                else:
                    rec["status_res2"] = "MATCH"
            except Timeout:
                raise
            except Exception as e:  # noqa: BLE001
                rec["status_res2"] = "ERROR"
                rec["res2_error"] = f"{type(e).__name__}: {str(e)[:400]}"
        return rec
    except Timeout as e:
        rec.update(status="ERROR-UNCLEAR", error_type="Timeout", message=str(e))
        return rec
    finally:
        signal.alarm(0)
        rec["seconds"] = round(time.time() - t0, 1)
        shutil.rmtree(tmp, ignore_errors=True)
        jax.clear_caches()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="timm_audit.json", help="results, one record per case (resumable)")
    ap.add_argument("--only", default="", help="NAME|NAME|...: only these cases")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--no-res2", action="store_true")
    ap.add_argument("--no-variants", action="store_true")
    ap.add_argument("--no-names", action="store_true")
    args = ap.parse_args()
    results_path = args.out
    results = {}
    if os.path.exists(results_path) and not args.fresh:
        results = json.load(open(results_path))
    jobs = []
    if not args.no_names:
        jobs += [(n, n, {}) for n in candidates()]
    if not args.no_variants:
        jobs += [(k, a, kw) for k, (a, kw) in VARIANTS.items()]
    if args.only:
        wanted = set(args.only.split("|"))
        jobs = [j for j in jobs if j[0] in wanted] or [(n, n, {}) for n in wanted]
    t_start = time.time()
    for i, (key, name, extra) in enumerate(jobs):
        if key in results and not args.only:
            continue
        rec = run_one(key, name, extra, not args.no_res2)
        results[key] = rec
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f, indent=1, default=str)
        os.replace(results_path + ".tmp", results_path)
        extra_s = f" diff={rec.get('diff'):.2e}" if rec.get("diff") is not None else ""
        r2 = f" res2={rec.get('status_res2')}" if rec.get("status_res2") else ""
        print(f"[{i + 1}/{len(jobs)} {time.time() - t_start:.0f}s] {key}: {rec['status']}{extra_s}{r2} "
              f"{(rec.get('message') or '')[:150]!r} ({rec['seconds']}s)", flush=True)
    counts = {}
    for r in results.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(json.dumps(counts))
    return 1 if counts.get("MISMATCH") or counts.get("ERROR-UNCLEAR") else 0


if __name__ == "__main__":
    sys.exit(main())
