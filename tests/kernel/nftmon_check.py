"""Run inside a test namespace: three own commits, then one foreign; print the counts."""
import subprocess
import time

from agent.kernel import nft, monitor as nftmon

SCRIPT = ("table inet secgroup_agent\ndelete table inet secgroup_agent\n"
          "table inet secgroup_agent {\n\tchain c {\n\t\taccept\n\t}\n}\n")
seen: list = []
watch = nftmon.TableWatch({("inet", "secgroup_agent")}, lambda what, objects: seen.append(what), lambda: seen.append("overflow"))
watch.start()
time.sleep(0.3)
for _ in range(3):
    nft.apply_script(SCRIPT)
time.sleep(0.5)
own = len(seen)
subprocess.run(["nft", "delete", "table", "inet", "secgroup_agent"], check=True)
deadline = time.monotonic() + 3
while len(seen) == own and time.monotonic() < deadline:
    time.sleep(0.05)
watch.close()
print(f"own={own}|foreign={len(seen) - own}")
