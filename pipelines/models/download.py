"""Getting the official weights into the models folder: first a plan (data: repo, file, size, destination, what
is already there), then the download. The only network access of the studio, and only when a person starts it.

Through huggingface_hub (its auth headers, redirects, retries; HF_ENDPOINT honoured, read at call time), but the
file handling is ours because huggingface_hub 2.x deletes a partial download when it fails: each file is written
to `<dest>.part`, kept when the transfer stops (network, cancel, crash) and continued with an HTTP Range request
next time; when complete its size and, for LFS files, its sha256 are checked, then it is renamed into place (a
half-written file never has the real name). Free disk space is checked against the plan before any byte moves.

The Gemma 3 text encoder repository is gated: the user accepts Google's licence on the Hub and gives a token
(--token, HF_TOKEN, or a stored `hf auth login`).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipelines.errors import Cancelled, UserError
from pipelines.models.registry import BY_KEY, VARIANTS, WeightFile, destination

GB = 1000**3
SPACE_MARGIN = 1 * GB  # keep this much free after the download
PART_SUFFIX = ".part"
SKIP_REPO_FILES = (".gitattributes",)

ProgressFn = Callable[[int, int, str], None]  # bytes done (all files), bytes to do (all files), message


@dataclass
class PlannedFile:
    key: str  # catalogue entry
    repo: str
    filename: str  # path in the repository
    size: int
    dest: str
    present: int = 0  # bytes already on disk (a complete file, or a .part to continue)
    complete: bool = False
    gated: bool = False

    @property
    def remaining(self) -> int:
        return 0 if self.complete else max(0, self.size - self.present)

    def to_dict(self) -> dict:
        return {"key": self.key, "repo": self.repo, "file": self.filename, "size": self.size, "dest": self.dest,
                "present": self.present, "complete": self.complete, "remaining": self.remaining,
                "gated": self.gated}


@dataclass
class DownloadPlan:
    models_dir: str
    endpoint: str
    files: list[PlannedFile] = field(default_factory=list)
    free_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def needed_bytes(self) -> int:
        return sum(f.remaining for f in self.files)

    @property
    def fits(self) -> bool:
        return self.needed_bytes + SPACE_MARGIN <= self.free_bytes

    def to_dict(self) -> dict:
        return {"models_dir": self.models_dir, "endpoint": self.endpoint, "total_bytes": self.total_bytes,
                "needed_bytes": self.needed_bytes, "free_bytes": self.free_bytes, "fits": self.fits,
                "files": [f.to_dict() for f in self.files]}

    def rows(self) -> list[list]:
        """For a table: repo, file, size GB, destination, status."""
        return [[f.repo, f.filename, round(f.size / GB, 2), f.dest,
                 "done" if f.complete else (f"{f.present / max(f.size, 1):.0%} there, continues" if f.present
                                            else "to download")] for f in self.files]


# ----------------------------------------------------------------------------------------------- helpers

def endpoint() -> str:
    """The Hub to talk to: HF_ENDPOINT when set (a mirror, or a test server), read now, not at import."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def resolve_token(token: str | None) -> str | None:
    """An explicit token, else HF_TOKEN / the token stored by `hf auth login`."""
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def disk_free(path: str | os.PathLike) -> int:
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _check_online() -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise UserError("downloads are off in this process: HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) is set; "
                        "run `python -m pipelines models download` without it (the studio's Download button does)")


def _hub_error(exc: Exception, repo: str, what: str, token: str | None) -> UserError:
    """A person-actionable message for what the Hub (or the network) said."""
    from huggingface_hub import errors

    page = f"https://huggingface.co/{repo}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.GatedRepoError) or (status in (401, 403) and BY_KEY.get("gemma") and
                                                   repo == BY_KEY["gemma"].repo):
        if not token:
            return UserError(f"{repo} is gated: accept its licence at {page} while logged in, then give a Hugging "
                             "Face token (--token, the Models tab's token field, HF_TOKEN, or `hf auth login`)")
        return UserError(f"{repo} refused the token ({status}): accept the licence at {page} with the account "
                         "that owns the token, and check the token has read access")
    if status == 401:
        return UserError(f"{repo}: the Hub answered 401 unauthorised for {what}"
                         + ("; the token was not accepted" if token else "; it may need a token"))
    if isinstance(exc, (errors.RepositoryNotFoundError, errors.EntryNotFoundError, errors.RevisionNotFoundError)) \
            or status == 404:
        return UserError(f"{what} was not found on the Hub ({repo}); the file names may have changed: see {page}")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return UserError("downloads are off in this process (HF_HUB_OFFLINE=1); unset it to download")
    import httpx2

    if isinstance(exc, (httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError, OSError)):
        return UserError(f"cannot reach the Hugging Face Hub at {endpoint()} ({type(exc).__name__}: {exc}); "
                         "check the network connection (or HF_ENDPOINT), then start the download again: it "
                         "continues where it stopped")
    return UserError(f"{repo}: the Hub refused {what}: {exc}")


def _part(dest: str | Path) -> Path:
    dest = Path(dest)
    return dest.with_name(dest.name + PART_SUFFIX)


def _present(dest: Path, size: int) -> tuple[int, bool]:
    if dest.is_file() and dest.stat().st_size == size:
        return size, True
    part = _part(dest)
    if part.is_file():
        n = part.stat().st_size
        return (n if n <= size else 0), False
    return 0, False


# ----------------------------------------------------------------------------------------------- the plan

def selection(variant: str | None = "distilled", keys: tuple[str, ...] | list[str] = ()) -> list[WeightFile]:
    if variant is not None and variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    chosen = list(VARIANTS[variant]) if variant else []
    for k in keys:
        if k not in BY_KEY:
            raise UserError(f"unknown file {k!r}; known: {', '.join(BY_KEY)}")
        if k not in chosen:
            chosen.append(k)
    if not chosen:
        raise UserError("nothing to download: give --variant or --file")
    return [BY_KEY[k] for k in chosen]


def plan_download(models_dir: str | os.PathLike, variant: str | None = "distilled", keys=(),
                  token: str | None = None) -> DownloadPlan:
    """Ask the Hub for the exact files and sizes of a selection; note what is already in the models folder."""
    _check_online()
    from huggingface_hub import HfApi

    if not models_dir:
        raise UserError("no models folder: pass --dir / --models-dir or set ICLORA_MODELS_DIR")
    token = resolve_token(token)
    ep = endpoint()
    api = HfApi(endpoint=ep, token=token)
    plan = DownloadPlan(models_dir=str(Path(models_dir)), endpoint=ep)
    infos: dict[str, dict[str, int]] = {}
    for w in selection(variant, keys):
        if w.repo not in infos:
            try:
                info = api.model_info(w.repo, files_metadata=True)
            except Exception as exc:  # noqa: BLE001  mapped to a message below
                raise _hub_error(exc, w.repo, f"the file list of {w.repo}", token) from None
            infos[w.repo] = {s.rfilename: int(s.size or 0) for s in (info.siblings or [])}
        files = infos[w.repo]
        if w.folder:
            names = sorted(n for n in files if n not in SKIP_REPO_FILES)
            if not names:
                raise UserError(f"{w.repo} lists no files")
            targets = [(n, Path(destination(models_dir, w)) / n) for n in names]
        else:
            if w.filename not in files:
                raise UserError(f"{w.filename} is not in {w.repo} any more; see https://huggingface.co/{w.repo}")
            targets = [(w.filename, Path(destination(models_dir, w)))]
        for name, dest in targets:
            size = files[name]
            present, complete = _present(dest, size)
            plan.files.append(PlannedFile(w.key, w.repo, name, size, str(dest), present, complete, w.gated))
    plan.free_bytes = disk_free(models_dir)
    return plan


def check_space(plan: DownloadPlan) -> None:
    if not plan.fits:
        raise UserError(f"not enough free disk space in {plan.models_dir}: the download needs "
                        f"{plan.needed_bytes / GB:.1f} GB (+{SPACE_MARGIN / GB:.0f} GB margin), "
                        f"{plan.free_bytes / GB:.1f} GB are free; free some space or choose another --dir")


# ----------------------------------------------------------------------------------------------- the download

def download(plan: DownloadPlan, token: str | None = None, progress: ProgressFn | None = None,
             should_cancel: Callable[[], bool] | None = None) -> list[str]:
    """Fetch every file of the plan not already complete (continuing .part files). Returns the destinations."""
    _check_online()
    check_space(plan)
    from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url, http_get
    from huggingface_hub.utils import build_hf_headers
    from huggingface_hub.utils import tqdm as hf_tqdm

    token = resolve_token(token)
    todo = plan.needed_bytes
    done_before = [0]  # bytes finished in earlier files of this call
    current = [""]  # the file being transferred

    class _Bar(hf_tqdm):
        """huggingface_hub's progress bar, also reporting to `progress` and checking for a cancel per chunk."""

        def __init__(self, *args, **kwargs):
            if progress is not None:
                kwargs["disable"] = True  # a caller with its own progress display: no console bar
            super().__init__(*args, **kwargs)
            self._fresh = 0

        def update(self, n=1):
            super().update(n)
            self._fresh += n
            if progress is not None:
                progress(done_before[0] + self._fresh, todo, current[0])
            if should_cancel is not None and should_cancel():
                raise Cancelled("download cancelled; start it again to continue where it stopped")

    out = []
    for f in plan.files:
        dest = Path(f.dest)
        if f.complete:
            out.append(str(dest))
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = _part(dest)
        url = hf_hub_url(f.repo, f.filename, endpoint=plan.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=token, endpoint=plan.endpoint)
        except Exception as exc:  # noqa: BLE001
            raise _hub_error(exc, f.repo, f.filename, token) from None
        size = meta.size if meta.size is not None else f.size
        current[0] = f.filename
        resume = part.stat().st_size if part.is_file() else 0
        if resume > size:
            part.unlink()
            resume = 0
        if progress is not None:
            progress(done_before[0], todo, f"{f.filename}: " + (f"continuing at {resume / GB:.2f} GB" if resume
                                                                 else "starting"))
        try:
            with part.open("ab") as fh:
                http_get(meta.location, fh, resume_size=resume, headers=build_hf_headers(token=token),
                         expected_size=size, displayed_filename=f.filename, tqdm_class=_Bar)
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001  the .part stays for the next attempt
            raise _hub_error(exc, f.repo, f.filename, token) from None
        _verify(part, size, meta.etag, f.filename)
        os.replace(part, dest)
        done_before[0] += size - resume
        out.append(str(dest))
    if progress is not None:
        progress(todo, todo, "done")
    return out


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _verify(part: Path, size: int, etag: str | None, name: str) -> None:
    """Size always; content too when the Hub's etag is the LFS sha256 of the file."""
    got = part.stat().st_size
    if got != size:
        part.unlink()
        raise UserError(f"{name}: downloaded {got} bytes, expected {size}; the partial file was removed, start the "
                        "download again")
    if etag and _SHA256.match(etag):
        h = hashlib.sha256()
        with part.open("rb") as fh:
            for chunk in iter(lambda: fh.read(16 * 1024 * 1024), b""):
                h.update(chunk)
        if h.hexdigest() != etag:
            part.unlink()
            raise UserError(f"{name}: the downloaded file is corrupt (sha256 differs from the Hub's); it was removed, "
                            "start the download again")
