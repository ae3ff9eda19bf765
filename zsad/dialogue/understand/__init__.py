"""Reading a question: its intents, what a yes means, the defect types and the place it is about.

:mod:`~zsad.dialogue.understand.questions` puts the steps together; each table lives in its own module. Nothing
here looks at evidence beyond the region a resolved question refers to.
"""
