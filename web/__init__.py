"""kiln's small web service: the upload form, the models page and the model-registry webhook receiver.

It only talks to Prefect (creating `optimize` flow runs) and reads the artifact store; user code never runs
here: uploads are saved and archives unpacked (safely), the flow-run process does the rest.
"""
