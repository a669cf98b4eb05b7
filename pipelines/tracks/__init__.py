"""Sparse point tracks for the Motion-Track IC-LoRA: file format and imports, spline timing, the renderer the
LoRA was trained on, and tracks extracted from a video (SPEC.md 6-7, issue 5).

    from pipelines.tracks import load_tracks, render_tracks, auto_tracks
    ts = load_tracks("tracks.json")                 # own format, ComfyUI editor data or per-frame lists
    video_bgr = render_tracks(ts, 768, 512)         # uint8 [T,H,W,3], BGR as the LoRA expects
"""
from pipelines.tracks.auto import SeedMode, auto_tracks, find_seeds, fit_keyframes, lk_paths
from pipelines.tracks.format import (FORMAT_NAME, FORMAT_VERSION, Point, Track, TrackSet, TrackSource,
                                     load_tracks, parse_trackset, save_tracks)
from pipelines.tracks.render import (TRAIL, CanvasGeometry, age_colour, age_colour_u8, age_radius, render_tracks,
                                     write_track_video)
from pipelines.tracks.spline import (catmull_rom, sample_timed, sample_uniform, track_positions,
                                     trackset_positions)

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "Point", "Track", "TrackSet", "TrackSource", "load_tracks", "parse_trackset",
    "save_tracks", "catmull_rom", "sample_uniform", "sample_timed", "track_positions", "trackset_positions",
    "TRAIL", "CanvasGeometry", "age_colour", "age_colour_u8", "age_radius", "render_tracks", "write_track_video",
    "SeedMode", "auto_tracks", "find_seeds", "fit_keyframes", "lk_paths",
]
