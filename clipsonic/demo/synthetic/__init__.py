"""A deterministic, procedural audio-visual data set: labelled videos of sixteen sound classes.

Not from the paper: CLIPSonic trains on VGGSound, which a test or a CPU demo cannot download.
This package writes a small stand-in with the same shape of problem: real video files (H.264 +
AAC in MP4, made by the ffmpeg binary), a picture track whose content tells the class, and a
sound track whose spectro-temporal character tells the same class, plus ``labels.csv``
(``file,label,split``) in the format `clipsonic preprocess` reads.

Every clip is drawn from its own ``numpy.random.Generator``, seeded by ``(seed, class, clip,
stream)``: clips can be made in any order or in parallel, adding clips leaves the earlier ones
unchanged, and the audio does not depend on the picture's random draws (or the reverse).
Within a class, pitch, tempo, loudness, noise floor, picture position/scale/rotation, colour
shade and background texture vary, so a model has to learn the class rather than a clip.

Layout written by `make_demo_data`::

    OUT/videos/<class>/<class>_<nnn>.mp4   4-10 s, 224 x 224 RGB at 4 fps, 16 kHz mono AAC
    OUT/labels.csv                          file,label,split (file relative to OUT/videos)
    OUT/demo_data.json                      the settings the clips were made with

Each video is written under a hidden temporary name and renamed when complete, so an
interrupted run never leaves a partial file under a final name; a re-run skips finished clips.

The parts: `streams` (the classes, one clip's random streams), `sounds` (one synthesizer per
class), `pictures` (one animated scene per class), `videos` (clip plans, tracks and MP4 files).
"""

from clipsonic.demo.synthetic.pictures import SIZE, class_picture, render_frame, scene_params
from clipsonic.demo.synthetic.sounds import PEAK_RANGE, SAMPLE_RATE, synthesize_audio
from clipsonic.demo.synthetic.streams import CLASSES, clip_rng
from clipsonic.demo.synthetic.videos import (ENCODED_PEAK_LIMIT, FPS, REFERENCE_FIRST_INDEX, ClipSpec, DemoData, clip_audio, clip_frames,
                                             make_demo_data, plan_clips, reference_clips, write_clip)

__all__ = ["CLASSES", "ENCODED_PEAK_LIMIT", "FPS", "PEAK_RANGE", "REFERENCE_FIRST_INDEX", "SAMPLE_RATE", "SIZE",
           "ClipSpec", "DemoData", "class_picture", "clip_audio", "clip_frames", "clip_rng", "make_demo_data",
           "plan_clips", "reference_clips", "render_frame", "scene_params", "synthesize_audio", "write_clip"]
