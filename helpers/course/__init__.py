"""What the notebooks show: experiments, plots, margin pictures, embedding maps, verification
pictures, unfreezing lessons, baselines, demo folders, recogniser pictures, widgets, exercises.

Built on the library (`helpers`), never the other way round: nothing in `helpers` imports from here.
"""
