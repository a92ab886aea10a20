"""The evaluation report in Markdown (`report.md` beside `report.json`, engine.training.evaluate):
the held-out quality table, where the generator's error lies, served warps and framing, the
backends' gate figures and the cache-layer ablation."""

from __future__ import annotations

from typing import Any


def markdown(report: dict[str, Any]) -> str:
    g, m = report["generator"], report["median_baseline"]
    lines = [
        f"# Evaluation of {report['avatar']}",
        "",
        f"{report['test_frames']} held-out test frames (interleaved blocks, never trained on; "
        f"split {report['split']}).",
        "",
        "| | L1 | PSNR (dB) | face PSNR (dB) | SSIM |",
        "|---|---|---|---|---|",
        f"| median of training crops (baseline) | {m['l1']:.4f} | {m['psnr']:.2f} | "
        f"{m['face_psnr']:.2f} | {m['ssim']:.4f} |",
        f"| generator every frame | {g['l1']:.4f} | {g['psnr']:.2f} | {g['face_psnr']:.2f} | "
        f"{g['ssim']:.4f} |",
    ]
    lines += [
        f"| warp k={r['k']} | {r['l1']:.4f} | {r['psnr']:.2f} | {r['face_psnr']:.2f} | "
        f"{r['ssim']:.4f} |"
        for r in report["warp_distance"]
    ]
    regions = g.get("regions")
    if regions:
        lines += [
            "",
            "Where the generator's squared error lies (off the face: below = the "
            "frame's bottom quarter, around = the rest):",
            "",
            "| region | share of pixels | share of squared error | PSNR (dB) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {r['pixels']:.3f} | {r['error']:.3f} | {r['psnr']:.2f} |"
            for name, r in regions.items()
        ]
    own = report.get("served_warps")
    if own:
        lines += [
            "",
            f"Warps over {own['moves']} small served moves (turns, jaw, smiles, blinks; "
            "`served_warps.png`: the generator's frames above, the warps below): "
            f"{own['psnr_from_generator']:.2f} dB from the generator's frames.",
        ]
    served = report.get("generator_median_framing")
    if served:
        lines += [
            "",
            "Generator with every frame at the training median's framing and, where the avatar "
            "reads the body, with the body its head pose predicts (as served): "
            f"{served['psnr']:.2f} dB, face {served['face_psnr']:.2f} dB, SSIM {served['ssim']:.4f}.",
        ]
    if report.get("backends"):
        b = report["backends"]
        lines += [
            "",
            f"## Backends (quality gate on {b['gate']}, {b['threads']} threads; chosen: "
            f"{b['label']}, together {b['served_psnr_fp32']} dB from fp32)",
            "",
            "| stage | backend | ms | dB from fp32 | dB lost to truth | passes |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['stage']} | {c['form'] or c['runtime'] + ' ' + c['precision']} | "
            f"{c['ms'] if c['ms'] is not None else '-'}"
            f"{_per_cache(c.get('prepare_ms'))} | "
            f"{c['psnr_fp32'] if c['psnr_fp32'] is not None else '-'} | "
            f"{c['truth_loss_db'] if c['truth_loss_db'] is not None else '-'} | "
            f"{'yes' if c['passed'] else 'no: ' + str(c['reason'])} |"
            for c in b["candidates"]
        ]
    if report["ablation"]:
        lines += [
            "",
            "## Cached layers (warp k=1, equal training budget)",
            "",
            "| layers | L1 | PSNR | SSIM | budget |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['cache_layers']} | {r['l1']:.4f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['budget']} |"
            for r in report["ablation"]
        ]
    return "\n".join(lines) + "\n"


def _per_cache(ms: float | None) -> str:
    """A warp's preparation of each cache, beside its time per frame (none: nothing)."""
    return "" if ms is None else f" (+ {ms} per cache)"
