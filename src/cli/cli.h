/* cli.h: the `duet` subcommands. Each cmd_<name> parses its own flags, prints its own --help, and returns
 * the process exit status (0 ok, 1 failure, 2 usage error). */
#ifndef DUET_CLI_H
#define DUET_CLI_H

int cmd_generate(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_cloud(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);

#endif
