"""The read side of part files: training reads (:mod:`.reader`), checks
(:mod:`.verify`) and rewriting older files into the random-access layout
(:mod:`.repack`)."""
