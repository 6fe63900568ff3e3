"""Shared test helpers (imported by test modules; pytest puts tests/ on sys.path)."""

import functools

from train.bundled import BUNDLED_CHECKPOINT, BUNDLED_DATA


@functools.lru_cache(maxsize=1)
def bundled_model_and_tokens():
    """(bundled model, its bundled train tokens), or None when the bundle is absent."""
    from artifact.runtime.checkpoint import load_checkpoint
    from artifact.runtime.shards import load_tokens, resolve_data

    if not (BUNDLED_CHECKPOINT / "model.pt").is_file():
        return None
    model, _, _ = load_checkpoint(BUNDLED_CHECKPOINT)
    data = resolve_data(BUNDLED_DATA)
    return model, load_tokens((data.train_files or data.val_files)[:1])


def chromium() -> str | None:
    """The headless browser the report's rendering check uses (Debian: `apt-get install -y
    chromium`), or None when none is installed."""
    import shutil

    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def screenshot(html_file, png_file, width: int = 1400, height: int = 2400, timeout: float = 180) -> None:
    """Render `html_file` in headless Chromium (a fresh profile, nothing fetched, no sandbox so it
    runs as root in a container) and save a `width` x `height` PNG of the page's top."""
    import subprocess
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="golf-chromium-") as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={Path(png_file).resolve()}", Path(html_file).resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or not Path(png_file).is_file():
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")


if __name__ == "__main__":  # python tests/helpers.py REPORT.html SHOT.png [WIDTH HEIGHT]
    import sys

    if chromium() is None:
        sys.exit("no headless chromium: apt-get install -y chromium")
    screenshot(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:5]))
    print(f"wrote {sys.argv[2]}")
