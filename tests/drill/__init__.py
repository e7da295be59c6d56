"""The voting-day drill (issue 6): real agents in field-lab stations, a scripted timeline of
network problems, and a report of how fast the collector's status flagged and cleared each.

    make drill                          # as root; the long form, a control-room rehearsal
    python -m tests.drill --short       # the CI form (tests/integration/test_drill.py runs it)

Modules: fleet (stations and the registry CSV), plan (settings, timeline, targets),
run (the stack and the timeline), report (times to flag and clear, Markdown and JSON).
See docs/drill.md.
"""
