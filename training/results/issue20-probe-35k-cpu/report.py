"""Table + plot from the probe's jsonl files: each net's SWD/sharpness/diversity against kimg."""
import json, sys, glob
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
out = sys.argv[1] if len(sys.argv) > 1 else "."
rows = [json.loads(l) for f in sorted(glob.glob(f"{out}/*-0.jsonl")) for l in open(f)]
nets = ["G-live", "ema-0.999", "ema-10kimg-r0.05", "ema-5kimg-r0.05", "ema-10kimg-noramp"]
fig, axes = plt.subplots(1, 4, figsize=(18, 4))
for variant, style in (("sagan", "-"), ("bamsgan", "--")):
    rs = [r for r in rows if r["variant"] == variant]
    if not rs: continue
    for i, net in enumerate(nets):
        for ax, m in zip(axes, ("swd", "sharpness", "diversity")):
            ax.plot([r["kimg"] for r in rs], [r[net][m] for r in rs], style, color=f"C{i}", label=f"{variant} {net}")
    for part, colour in (("D_real", "k"), ("D_fake", "r"), ("D_blur", "b"), ("D_memory", "g")):
        pts = [(r["kimg"], r["D"][part]) for r in rs if part in r["D"]]
        if pts: axes[3].plot(*zip(*pts), style, color=colour, label=f"{variant} {part}")
for ax, title in zip(axes, ("SWD (lower better)", "sharpness / real", "diversity / real", "D mean logit (last step)")):
    ax.set_title(title); ax.set_xlabel("kimg")
axes[0].legend(fontsize=6); axes[3].legend(fontsize=6)
fig.tight_layout(); fig.savefig(f"{out}/probe.png", dpi=90)
lines = ["| variant | kimg | net | SWD | sharpness | diversity |", "|---|---:|---|---:|---:|---:|"]
for r in rows:
    for net in nets:
        lines.append(f"| {r['variant']} | {r['kimg']:.1f} | {net} | {r[net]['swd']:.1f} | {r[net]['sharpness']:.3f} | {r[net]['diversity']:.3f} |")
lines += ["", "| variant | kimg | D_real | D_fake | D_blur | D_memory |", "|---|---:|---:|---:|---:|---:|"]
for r in rows:
    d = r["D"]; lines.append(f"| {r['variant']} | {r['kimg']:.1f} | " + " | ".join(f"{d[k]:+.2f}" if k in d else "–" for k in ("D_real", "D_fake", "D_blur", "D_memory")) + " |")
open(f"{out}/probe-table.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
