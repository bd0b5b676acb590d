"""The citizen's portal (`backbone portal`): each person sees every disclosure about them, with receipts, and withdraws consent."""
