// qtchat PORT [--host ADDR] [--cert FILE --key FILE] [-v]
// Console host for ChatServer (see chatserver.h). Listens on 127.0.0.1 by
// default (the article listened on QHostAddress::Any, port 8888).
#include "chatserver.h"

#include <QCoreApplication>
#include <QFile>
#include <QSslCertificate>
#include <QSslKey>
#include <csignal>
#include <cstdio>

static void quitOnSignal(int) { QCoreApplication::quit(); }

static QByteArray readAll(const QString &path)
{
    QFile f(path);
    if (!f.open(QIODevice::ReadOnly)) {
        fprintf(stderr, "qtchat: cannot read %s\n", qPrintable(path));
        exit(2);
    }
    return f.readAll();
}

int main(int argc, char *argv[])
{
    QCoreApplication app(argc, argv);
    const QStringList args = app.arguments();
    quint16 port = 0;
    QString host = "127.0.0.1", cert, key;
    bool verbose = false;
    for (int i = 1; i < args.size(); ++i) {
        const QString &a = args[i];
        if (a == "--host" && i + 1 < args.size()) host = args[++i];
        else if (a == "--cert" && i + 1 < args.size()) cert = args[++i];
        else if (a == "--key" && i + 1 < args.size()) key = args[++i];
        else if (a == "-v") verbose = true;
        else if (port == 0 && a.toUShort() != 0) port = a.toUShort();
        else {
            fprintf(stderr, "usage: qtchat PORT [--host ADDR] [--cert FILE --key FILE] [-v]\n");
            return 2;
        }
    }
    if (port == 0 || cert.isEmpty() != key.isEmpty()) {
        fprintf(stderr, "usage: qtchat PORT [--host ADDR] [--cert FILE --key FILE] [-v]\n");
        return 2;
    }

    QSslConfiguration ssl;
    if (!cert.isEmpty()) {
        const QList<QSslCertificate> chain = QSslCertificate::fromData(readAll(cert), QSsl::Pem);
        QByteArray keyPem = readAll(key);
        QSslKey sslKey(keyPem, QSsl::Ec, QSsl::Pem);
        if (sslKey.isNull())
            sslKey = QSslKey(keyPem, QSsl::Rsa, QSsl::Pem);
        if (chain.isEmpty() || sslKey.isNull()) {
            fprintf(stderr, "qtchat: bad certificate or key\n");
            return 2;
        }
        ssl = QSslConfiguration::defaultConfiguration();
        ssl.setLocalCertificateChain(chain);
        ssl.setPrivateKey(sslKey);
        ssl.setPeerVerifyMode(QSslSocket::VerifyNone);
    }

    ChatServer server(QHostAddress(host), port, cert.isEmpty() ? nullptr : &ssl, verbose);
    if (!server.isListening()) {
        fprintf(stderr, "qtchat: cannot listen on %s:%u: %s\n", qPrintable(host), port,
                qPrintable(server.errorString()));
        return 1;
    }
    signal(SIGTERM, quitOnSignal);
    signal(SIGINT, quitOnSignal);
    fprintf(stderr, "qtchat listening on %s:%u (%s)\n", qPrintable(host), port,
            cert.isEmpty() ? "ws" : "wss");
    return app.exec();
}
