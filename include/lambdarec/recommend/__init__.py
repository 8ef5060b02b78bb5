"""The recommendation pipeline: candidate sources, filters, ranking and rules, as one program.

Serving (``serving.recommender``) runs it with its live stores behind guards; offline evaluation
runs the same code with in-memory stand-ins (:mod:`lambdarec.recommend.memory`). The stages, in
:class:`~lambdarec.recommend.pipeline.Pipeline`:

1. **features**: the request's online features (``retrieval_v1``: the session's and the user's);
2. **candidates**: every configured source (:mod:`lambdarec.recommend.sources`, one module each)
   proposes items with a score in [0, 1]; each candidate keeps the sources it came from;
3. **filter**: items blocked for this request (excluded, purchased) or not in the catalog go; too
   few survivors make the sources that can give more give more (adaptive over-fetch);
4. **rank**: the ranker when one is loaded, else a transparent blend of the source scores
   (:mod:`lambdarec.recommend.ranking`);
5. **rules**: dedupe and a per-category cap for diversity (:mod:`lambdarec.recommend.rules`).
"""
