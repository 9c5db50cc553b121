// Runs a list of flows as SimGrid S4U communications and prints each one's finish time.
//
// Usage: flows PLATFORM.xml FLOWS.txt [--cfg=...]
// FLOWS.txt: one flow per line, "src_host dst_host start size_bytes". Output: one line per flow,
// "index finish", in input order. Used by tests/unit/test_fabric_simgrid.py to check nic/fabric.py
// against SimGrid's max-min solver; the platform's time unit is whatever the caller chose (the test
// writes bandwidths in bytes/us and latencies in us, so SimGrid's seconds read as microseconds).
#include <simgrid/s4u.hpp>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace sg4 = simgrid::s4u;

namespace {
struct Flow {
  std::string src;
  std::string dst;
  double start = 0.0;
  std::uint64_t size = 0;
  double finish = -1.0;
};

std::vector<Flow> flows;

void run_flow(std::size_t i)
{
  Flow& f = flows[i];
  sg4::this_actor::sleep_until(f.start);
  sg4::Comm::sendto(sg4::Host::by_name(f.src), sg4::Host::by_name(f.dst), f.size);
  f.finish = sg4::Engine::get_clock();
}
} // namespace

int main(int argc, char** argv)
{
  sg4::Engine engine(&argc, argv);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s PLATFORM.xml FLOWS.txt [--cfg=...]\n", argv[0]);
    return 2;
  }
  engine.load_platform(argv[1]);
  std::ifstream in(argv[2]);
  Flow f;
  while (in >> f.src >> f.dst >> f.start >> f.size)
    flows.push_back(f);
  for (std::size_t i = 0; i < flows.size(); ++i)
    sg4::Actor::create("flow" + std::to_string(i), sg4::Host::by_name(flows[i].src), run_flow, i);
  engine.run();
  for (std::size_t i = 0; i < flows.size(); ++i)
    std::printf("%zu %.17g\n", i, flows[i].finish);
  return 0;
}
