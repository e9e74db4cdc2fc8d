
import errno, hashlib, json, os, select, socket, struct, sys, threading, time
def emit(**kw):
    print(json.dumps(kw), flush=True)
