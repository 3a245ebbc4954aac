pkill -f suite.sh; pkill -f gpu-suite.sh; pkill -f benchmarks/vllm.py; sleep 1
R=/var/tmp/rewarm-bench/vllm/lab/runc-root
for c in $(/opt/rewarm/bin/runc --root $R list -q 2>/dev/null); do /opt/rewarm/bin/runc --root $R delete -f $c; done
sleep 2; nvidia-smi --query-gpu=memory.used --format=csv,noheader
for m in $(grep /var/tmp/rewarm-bench/vllm /proc/mounts | awk '{print $2}' | sort -r); do umount $m; done
for n in $(ls /run/netns); do umount /run/netns/$n; rm -f /run/netns/$n; done
rm -rf /var/tmp/rewarm-bench/vllm; cp benchmarks/vllm.py /opt/rw/benchmarks/vllm.py
sed -i 's/^t=.*make_model.py.*$/true/' /opt/suite.sh; rm -f /opt/suite.done /opt/rw/benchmarks/results/vllm_h200.log
setsid nohup bash /opt/suite.sh > /opt/suite.log 2>&1 < /dev/null &
sleep 1; bash /opt/wait.sh ${1:-500}
