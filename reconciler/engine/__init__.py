"""The engine: from a listing and the database's rows to a plan's changes. Pure over
its inputs (no database, no network): it reads keys by the catalogue
(:mod:`.frames`), compares desired and current rows (:mod:`.diff`), finds moves
(:mod:`.moves`), and does so in batches of top-entity keys, spilling to disk what does
not fit (:mod:`.plan`, :mod:`.spill`). :mod:`.safety` holds the guards a plan must
pass, :mod:`.shards` the split of a catalogue's top keys into shards.
"""

# Objects planned at a time (whole top rows): memory follows it (~400-500 MB at the default).
BATCH_ROWS = 100_000
