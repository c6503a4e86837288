"""The preference store: users, chats, ratings, corrections, comparisons, imports, exports.

Everything experts say about the assistant's replies lands here and comes back out as
TRL SFT/DPO rows. This package imports neither `app` nor `training`.
"""
