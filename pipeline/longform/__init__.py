"""Long-form dubbing: a job longer than the API's limit, cut at the dub's pauses into segments
that run as ordinary jobs, then stitched back into one file.

* `pauses`: where the dub is silent (energy over decoded audio).
* `segments`: the planner (cut frames, fingerprints, the price) and `LongPlan`.
* `cut`: the segment files (PyAV re-encode on the plan's frame grid; WAV audio).
* `stitch`: the segments' pictures in order with the original dub as the sound.
* `run`: a run's long jobs, expanded into segment jobs before reconcile, stitched after.
"""
