"""The translation task (the paper's Table 2): German→English with a post-LN transformer, Xavier vs
T-Fixup vs the emergence schemes, BLEU with sacrebleu. :func:`train.run` is the task's run
function (``task: translation`` in :mod:`emergeinit.bench.config`); ``data``, ``spm`` and
``decode`` are its corpus, subword and decoding steps, ``report`` its Table-2 report."""
