"""`reprscope.analyze` of a small store read in many small chunks and batches, so that every split analyzer's
passes really are shared (run by tests/test_distributed_extract.py once alone and once under torchrun with 2
processes; rank 0 writes the table). Usage: small_chunks.py STORE OUT.csv"""
import os
import sys

import reprscope.metrics.center as center
import reprscope.metrics.similarity as similarity
from reprscope.extract.store import Store
from reprscope.pipeline import analyze
from reprscope.table import write_table

CHUNK = 48  # samples per chunk of the streaming passes: 300 samples → 7 chunks
center._CHUNK_ELEMS = 4096  # center reads 2 views × d at a time: 4096 // (2 d) samples per chunk
similarity._KNN_BLOCK = 40  # mutual k-NN row blocks
layer_data = Store.layer_data
Store.layer_data = lambda self, layer, seed=0, device="cpu", chunk_size=CHUNK: layer_data(self, layer, seed, device, CHUNK)

params = {"matrix_information": {"batch_size": 32}, "similarity": {"batch_size": 40}, "knn": {"ks": "5,20"}}
res = analyze([sys.argv[1]], analyzers=["spectrum", "vicreg", "lidar", "center", "knn", "matrix_information",
                                                "similarity", "identifiability"], params=params, progress=False,
              bootstrap=3)  # rank 0 computes the intervals alone
if os.environ.get("RANK", "0") == "0":  # rank 0 alone writes (analyze left the job's process group on return)
    write_table(res.table, sys.argv[2])
    print("\n".join(res.notes))
